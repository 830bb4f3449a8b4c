//! HTTP API errors: one status and one plain-text message per refusal
//! (spec §12.3). Pusher reports only the first problem, so a request yields
//! at most one of these.

use super::signature::SignatureError;

/// A refused HTTP API request. The caller answers [`ApiError::status`] with
/// [`ApiError::message`] as the body and publishes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the body or query is invalid (missing field, bad name, batch too
    /// large, …). The message names the first problem.
    #[error("{0}")]
    BadRequest(String),
    /// 401: request signing failed (spec §12.2).
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the app is disabled or over its quota.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown app or resource.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not for this method.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 413: event data over the size limit (spec §12.4).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503: the server cannot take the request now; the client may retry.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge(_) => 413,
            Self::Unavailable(_) => 503,
        }
    }

    /// The plain-text body, without allocating.
    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::PayloadTooLarge(m)
            | Self::Unavailable(m) => m,
            Self::MethodNotAllowed => "Method not allowed",
        }
    }
}

impl From<SignatureError> for ApiError {
    /// Every signing failure is 401 (see [`SignatureError::status`]).
    fn from(e: SignatureError) -> Self {
        Self::Unauthorized(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_message() {
        let cases = [
            (ApiError::BadRequest("b".into()), 400, "b"),
            (ApiError::Unauthorized("u".into()), 401, "u"),
            (ApiError::Forbidden("f".into()), 403, "f"),
            (ApiError::NotFound("n".into()), 404, "n"),
            (ApiError::MethodNotAllowed, 405, "Method not allowed"),
            (ApiError::PayloadTooLarge("p".into()), 413, "p"),
            (ApiError::Unavailable("s".into()), 503, "s"),
        ];
        for (e, status, msg) in cases {
            assert_eq!(e.status(), status);
            assert_eq!(e.message(), msg);
            assert_eq!(e.to_string(), msg);
        }
    }

    #[test]
    fn signature_errors_are_401() {
        let e = ApiError::from(SignatureError::Missing("auth_key"));
        assert_eq!(e.status(), 401);
        assert_eq!(e.message(), "Missing required parameter: auth_key");
    }
}
