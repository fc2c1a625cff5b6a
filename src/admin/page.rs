//! The live status page's three static files (`/`, `/page.css`, `/page.js`), embedded in the binary, and the headers that confine them.
//!
//! The page draws everything from `/stats` and `/ready`, which it polls once
//! a second from the browser: it adds nothing to the data path. Script and
//! style are separate same-origin files rather than inline, so the Content
//! Security Policy can say `'self'` and nothing else (no `'unsafe-inline'`,
//! no hash to keep in step with the text).

/// One embedded file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Asset {
    pub body: &'static str,
    pub content_type: &'static str,
    /// Entity tag (FNV-1a of the body, computed at compile time).
    pub tag: u64,
}

/// Allows the page to load its own script and style and to fetch from its
/// own origin; nothing inline, nothing from elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const HTML: &str = include_str!("page/index.html");
const CSS: &str = include_str!("page/page.css");
const JS: &str = include_str!("page/page.js");

/// The file served at `path`, if `path` is one of the page's.
pub fn asset(path: &str) -> Option<Asset> {
    let (body, content_type) = match path {
        "/" | "/index.html" => (HTML, "text/html; charset=utf-8"),
        "/page.css" => (CSS, "text/css; charset=utf-8"),
        "/page.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    Some(Asset {
        body,
        content_type,
        tag: fnv1a(body.as_bytes()),
    })
}

/// The page's three files together, in bytes (for the size bound's test and
/// the note).
#[cfg(test)]
pub const TOTAL_BYTES: usize = HTML.len() + CSS.len() + JS.len();

/// 64-bit FNV-1a: a content fingerprint for `ETag`, not a defence.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut rest = bytes;
    while let [first, tail @ ..] = rest {
        hash ^= *first as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        rest = tail;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_nothing_inline() {
        let html = asset("/").unwrap().body;
        assert!(html.contains("<script src=\"/page.js\" defer></script>"));
        assert!(html.contains("<link rel=\"stylesheet\" href=\"/page.css\">"));
        for file in [HTML, CSS, JS] {
            for banned in ["http://", "https://", "//fonts", "@import", "url("] {
                assert!(!file.contains(banned), "{banned} in a page file");
            }
        }
        // Inline script or style would be refused by the CSP, so none exists.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("<style") && !html.contains(" style="));
        let handler = html.split(" on").skip(1).any(|after| {
            let name: String = after.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && after[name.len()..].starts_with('=')
        });
        assert!(!handler, "an inline event handler");
    }

    #[test]
    fn tags_differ_per_file_and_follow_the_content() {
        let tags: Vec<u64> = ["/", "/page.css", "/page.js"]
            .iter()
            .map(|p| asset(p).unwrap().tag)
            .collect();
        assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2]);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!(asset("/page").is_none() && asset("/stats").is_none());
    }
}
