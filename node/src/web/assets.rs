//! The pages' CSS, script and icon, embedded at compile time and served under names that carry a
//! hash of their content (`app.3f2a9c1b0d.css`), so browsers may keep them for a year: a changed file
//! gets a new name.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use sha2::Digest;

struct Asset {
    /// The name templates ask for (`app.css`).
    name: &'static str,
    /// The served name with the content hash (`app.<hash>.css`) and its URL.
    url: String,
    media_type: &'static str,
    body: &'static [u8],
}

const FILES: &[(&str, &str, &[u8])] = &[
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../assets/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/app.js")),
    ("icon.svg", "image/svg+xml", include_bytes!("../../assets/icon.svg")),
    // The report form's early checks (web/reporting.rs).
    ("reporting.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/reporting.js")),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(name, media_type, body)| {
            let hash = hex::encode(&sha2::Sha256::digest(body)[..5]);
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
            Asset { name, url: format!("/ui/assets/{stem}.{hash}.{ext}"), media_type, body }
        })
        .collect()
});

/// The URL of an asset by its plain name (`/ui/assets/missing` for an unknown name, a 404).
pub fn url(name: &str) -> &'static str {
    ASSETS.iter().find(|a| a.name == name).map_or("/ui/assets/missing", |a| a.url.as_str())
}

/// `GET /ui/assets/{file}`: only the current hashed names exist.
pub async fn serve(Path(file): Path<String>) -> Response {
    let wanted = format!("/ui/assets/{file}");
    let Some(a) = ASSETS.iter().find(|a| a.url == wanted) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut resp = a.body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.media_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    resp
}
