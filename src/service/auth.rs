//! Bearer-token authentication of RPCs.
//!
//! With a token configured, every RPC of `ProjectManager` must carry
//! `authorization: Bearer <token>` (the scheme in any case, as RFC 7235
//! says); the comparison takes the same time wherever the first differing
//! byte is. The health service is not wrapped.

use std::path::Path;

use tonic::{Request, Status};

/// Reads a token file: its content without surrounding whitespace, not
/// empty, with no control character inside (it travels in an HTTP header).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    if let Some(at) = token.bytes().position(|b| b.is_ascii_control()) {
        return Err(format!(
            "the token file {} holds a control character at byte {at}; a token is one line of printable text",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// The token of an `authorization` header value: `Bearer <token>`, the
/// scheme matched case-insensitively, surrounding blanks ignored.
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, token) = header.split_at(header.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
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
        Self { expected: token }
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
        let Some(presented) = request
            .metadata()
            .get("authorization")
            .and_then(|v| bearer_token(v.as_bytes()))
        else {
            return Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            ));
        };
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

    #[test]
    fn the_scheme_is_case_insensitive_and_blanks_around_the_token_are_ignored() {
        let mut auth = BearerAuth::new(Some("s3cret".into()));
        for header in [
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer  s3cret ",
            " Bearer s3cret",
        ] {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
            assert!(auth.call(request).is_ok(), "{header:?}");
        }
        for header in ["Basic s3cret", "Bearers3cret", "s3cret", "Bearer s3cre"] {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
            assert!(auth.call(request).is_err(), "{header:?}");
        }
    }

    #[test]
    fn a_token_file_is_trimmed_and_control_characters_inside_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret \n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "s3cret");
        std::fs::write(&path, "s3c\x07ret\n").unwrap();
        let err = read_token(&path).unwrap_err();
        assert!(err.contains("control character at byte 3"), "{err}");
        std::fs::write(&path, " \n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("is empty"));
    }
}
