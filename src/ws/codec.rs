//! WebSocket frame codec (sans-IO).
