//! WebSocket opening handshake (sans-IO).
