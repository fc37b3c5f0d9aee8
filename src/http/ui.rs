//! `/ui`: the live dashboard (http.md §8.4), three files embedded in the
//! binary: a page, its script and its style sheet, written here in plain
//! HTML, JavaScript, CSS and SVG (no library, no build step, nothing
//! fetched from elsewhere).
//!
//! The files are public, like `/v1/openapi.json`: they hold no data. The
//! page reads everything through the JSON routes (`/v1/stats?top=…`,
//! `/v1/keys/{key}`, `/v1/activity`), which need the bearer token when the
//! server has one; the page then asks for it and keeps it in the tab's
//! `sessionStorage`. It polls once a second, one request per view, and
//! never asks for the full listing.
//!
//! Every file is served with a Content-Security-Policy that allows only
//! this origin's own script, style sheet and JSON (no inline script or
//! style, no framing, no form targets), `no-referrer`, and no caching (a
//! new binary serves its own page).

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use hyper::StatusCode;

use super::{raw_resp, Resp};

/// One of the dashboard's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    Page,
    Script,
    Style,
}

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The policy of every dashboard response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Answers `GET /ui`, `/ui/app.js` or `/ui/app.css`.
pub(super) fn serve(asset: Asset) -> Resp {
    let (content_type, body) = match asset {
        Asset::Page => ("text/html; charset=utf-8", PAGE),
        Asset::Script => ("text/javascript; charset=utf-8", SCRIPT),
        Asset::Style => ("text/css; charset=utf-8", STYLE),
    };
    let mut r = raw_resp(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    let h = r.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads only its own two files, and neither has inline code
    /// the policy would block (or an address elsewhere).
    #[test]
    fn the_files_need_nothing_the_policy_forbids() {
        assert!(PAGE.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#));
        assert_eq!(PAGE.matches("<script").count(), 1, "no inline script");
        for text in [PAGE, SCRIPT, STYLE] {
            // No address elsewhere; the SVG namespace is a name, not a fetch.
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains(" style=") && !text.contains("<style"));
            assert!(!text.contains(" onclick") && !text.contains(" onload"));
        }
        assert!(!SCRIPT.contains("eval(") && !SCRIPT.contains("new Function"));
        assert!(!SCRIPT.contains("innerHTML"), "text goes in as text");
        assert!(!SCRIPT.contains("setAttribute('style'"));
    }

    #[test]
    fn every_file_carries_the_policy() {
        for a in [Asset::Page, Asset::Script, Asset::Style] {
            let r = serve(a);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[CONTENT_SECURITY_POLICY], CSP);
            assert!(CSP.contains("script-src 'self';") && !CSP.contains("unsafe"));
        }
    }
}
