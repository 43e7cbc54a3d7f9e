//! Bearer-token authentication of RPCs.
//!
//! With a token configured, every RPC of `ProjectManager` must carry
//! `authorization: Bearer <token>`; the comparison takes the same time
//! wherever the first differing byte is. The health service is not wrapped.

use std::path::Path;

use tonic::{Request, Status};

/// Reads a token file: its content without surrounding whitespace, not empty.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A tonic interceptor checking the bearer token (no-op without one).
#[derive(Debug, Clone)]
pub struct BearerAuth {
    expected: Option<String>,
}

impl BearerAuth {
    /// An interceptor requiring `token`, or accepting everything if `None`.
    pub fn new(token: Option<String>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// Whether a token is required.
    pub fn enabled(&self) -> bool {
        self.expected.is_some()
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if presented.is_empty() {
            return Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            ));
        }
        if !constant_time_eq(presented, expected.as_bytes()) {
            return Err(Status::unauthenticated("wrong bearer token"));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn rejects_missing_and_wrong_tokens() {
        let mut auth = BearerAuth::new(Some("s3cret".into()));
        let missing = auth.call(Request::new(())).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            auth.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut right = Request::new(());
        right
            .metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(auth.call(right).is_ok());
        assert!(BearerAuth::new(None).call(Request::new(())).is_ok());
    }
}
