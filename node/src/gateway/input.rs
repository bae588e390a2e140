//! Input hardening at the gateway: header and URL sizes, the nesting depth of JSON bodies, and the
//! security headers every answer carries.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::Request;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;

use crate::api::error::ApiError;
use crate::limits::JSON_CHECKED_BODY_BYTES_MAX;
use crate::limits::JSON_DEPTH_MAX;
use crate::limits::REQUEST_HEADERS_BYTES_MAX;
use crate::limits::REQUEST_URI_BYTES_MAX;

/// 414 for a long URL, 431 for large headers (both JSON, unlike hyper's own refusals past its
/// buffer, `HTTP1_BUFFER_BYTES_MAX`).
pub fn check_sizes(req: &Request<Body>) -> Result<(), ApiError> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > REQUEST_URI_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the URL is longer than {REQUEST_URI_BYTES_MAX} bytes"),
        ));
    }
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_bytes > REQUEST_HEADERS_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are larger than {REQUEST_HEADERS_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn is_json(headers: &HeaderMap) -> bool {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json")
}

/// The deepest nesting of arrays and objects in `bytes`, or `Err(offset)` at the first byte
/// that goes deeper than `max`. A scan over the bytes that skips strings; it does not validate
/// the JSON (the handler's parser does), so it costs one pass and no allocation.
pub fn json_depth_within(bytes: &[u8], max: usize) -> Result<(), usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// For a JSON body: reads it (up to `JSON_CHECKED_BODY_BYTES_MAX`) and refuses it with 400 when it
/// nests deeper than `JSON_DEPTH_MAX`; the request goes on with the same bytes. A larger body is
/// passed on unchecked: every handler refuses bodies that large (413) before parsing them.
pub async fn check_json_depth(req: Request<Body>) -> Result<Request<Body>, ApiError> {
    if !is_json(req.headers()) {
        return Ok(req);
    }
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > JSON_CHECKED_BODY_BYTES_MAX as u64) {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("the request body could not be read"))?;
        buf.extend_from_slice(&chunk);
        if buf.len() > JSON_CHECKED_BODY_BYTES_MAX {
            let head: Bytes = buf.freeze();
            let rest = futures::stream::once(async move { Ok::<_, axum::Error>(head) }).chain(stream);
            return Ok(Request::from_parts(parts, Body::from_stream(rest)));
        }
    }
    let bytes = buf.freeze();
    if let Err(at) = json_depth_within(&bytes, JSON_DEPTH_MAX) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "json_too_deep",
            format!("the JSON body nests arrays and objects deeper than {JSON_DEPTH_MAX} levels (at byte {at})"),
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// HSTS, no MIME sniffing and no referrer on every answer; for HTML also a CSP that forbids
/// framing (clickjacking) and foreign content.
pub fn add_security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    let html = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html"));
    if html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
            ),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_is_counted_outside_strings() {
        assert!(json_depth_within(br#"{"a": [1, {"b": 2}]}"#, 3).is_ok());
        assert_eq!(json_depth_within(br#"{"a": [1, {"b": 2}]}"#, 2), Err(10));
        assert!(json_depth_within(br#"{"a": "[[[[[[\"[[["}"#, 1).is_ok(), "brackets in strings do not count");
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(json_depth_within(deep.as_bytes(), 64).is_err());
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(json_depth_within(ok.as_bytes(), 64).is_ok());
        assert!(json_depth_within(b"]]]]{", 1).is_ok(), "malformed JSON is the parser's business");
    }

    #[test]
    fn html_answers_get_a_csp_and_every_answer_the_rest() {
        let mut json = Response::new(Body::empty());
        add_security_headers(&mut json);
        assert!(json.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert_eq!(json.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!json.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let mut html = Response::new(Body::empty());
        html.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        add_security_headers(&mut html);
        let csp = html.headers()[header::CONTENT_SECURITY_POLICY].to_str().expect("text");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
}
