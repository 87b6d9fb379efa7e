//! Credentials never leave faceflow: the password of any URL (`scheme://user:password@host…`) in
//! text meant for people or other programs — log lines, error lines, summaries, the `source` of
//! JSON records — is replaced by `***`. The user name stays, so a reader still knows which camera
//! failed.

use std::borrow::Cow;

/// What stands in for a password.
pub const MASK: &str = "***";

/// `text` with the password of every URL in it replaced by [`MASK`]: `rtsp://admin:secret@cam/x`
/// becomes `rtsp://admin:***@cam/x`. URLs without a password, and text without URLs, come back
/// as they are (borrowed).
pub fn credentials(text: &str) -> Cow<'_, str> {
    match userinfo_passwords(text) {
        Cow::Borrowed(_) => query_passwords(text),
        Cow::Owned(masked) => Cow::Owned(query_passwords(&masked).into_owned()),
    }
}

/// Query parameters that carry a secret (`?user=admin&password=…`, common with HTTP cameras).
const SECRET_KEYS: [&str; 6] = ["password", "passwd", "pwd", "pass", "token", "secret"];

/// `text` with the values of [`SECRET_KEYS`] query parameters of URLs masked.
fn query_passwords(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut copied = 0;
    for (i, c) in text.char_indices() {
        if c != '?' && c != '&' {
            continue;
        }
        let rest = &text[i + 1..];
        let Some(eq) = rest.find('=') else { continue };
        let key = &rest[..eq];
        if !SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k)) {
            continue;
        }
        let value_start = i + 1 + eq + 1;
        let value_len = text[value_start..]
            .find(|c: char| c == '&' || c == '#' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(text.len() - value_start);
        if value_len > 0 && value_start >= copied {
            out.push_str(&text[copied..value_start]);
            out.push_str(MASK);
            copied = value_start + value_len;
        }
    }
    rest_of(text, out, copied)
}

/// `text` with the password of every `scheme://user:password@` masked.
fn userinfo_passwords(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let authority_start = search + found + 3;
        // The authority ends at the path, query, fragment, or anything that cannot be in it
        // (text around a URL in a message: spaces, quotes, brackets).
        let authority_len = text[authority_start..]
            .find(|c: char| {
                matches!(
                    c,
                    '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`' | ')' | ']'
                ) || c.is_whitespace()
            })
            .unwrap_or(text.len() - authority_start);
        let mut authority_len = authority_len;
        // A password may hold a raw '/' (people paste them unescaped): then the authority seems to
        // end inside the password. While the next path segment holds an '@', it is taken as part
        // of the user information (`user:pa/ss@host`, `user:2024/x@host`); a URL whose path has an
        // '@' in its first segment is masked more than needed, never less. Not for IPv6 hosts.
        let opens_userinfo =
            |authority: &str| !authority.starts_with('[') && authority.contains(':');
        if opens_userinfo(&text[authority_start..authority_start + authority_len]) {
            let url_len = text[authority_start..]
                .find(|c: char| {
                    matches!(c, '"' | '\'' | '<' | '>' | '`' | '?' | '#') || c.is_whitespace()
                })
                .unwrap_or(text.len() - authority_start);
            let url = &text[authority_start..authority_start + url_len];
            while url[authority_len..].starts_with('/') {
                let rest = &url[authority_len + 1..];
                let segment = rest.find('/').map_or(rest, |end| &rest[..end]);
                if !segment.contains('@') {
                    break;
                }
                authority_len += 1 + segment.len();
            }
        }
        let authority = &text[authority_start..authority_start + authority_len];
        // The user information ends at the last '@' (a password may hold one unescaped).
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            let password_start = authority_start + colon + 1;
            let password_end = authority_start + at;
            if password_end > password_start {
                out.push_str(&text[copied..password_start]);
                out.push_str(MASK);
                copied = password_end;
            }
        }
        search = authority_start + authority_len;
    }
    rest_of(text, out, copied)
}

/// `text` as masked so far: `out` holds its first `copied` bytes with masks in; the rest follows
/// unchanged. Borrowed when nothing was masked.
fn rest_of(text: &str, mut out: String, copied: usize) -> Cow<'_, str> {
    if copied == 0 {
        Cow::Borrowed(text)
    } else {
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}

/// A writer that redacts what passes through it, line by line as it is written: for log output
/// (one write per formatted event).
pub struct Redacting<W>(pub W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => {
                self.0.write_all(credentials(text).as_bytes())?;
                Ok(buf.len())
            }
            Err(_) => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_user_and_host_kept() {
        let cases = [
            (
                "rtsp://admin:secret@cam.local:554/stream",
                "rtsp://admin:***@cam.local:554/stream",
            ),
            (
                "mqtt://u:p@broker:1883/faceflow/{stream}",
                "mqtt://u:***@broker:1883/faceflow/{stream}",
            ),
            (
                "http://admin:p@ss@host/x?y=1",
                "http://admin:***@host/x?y=1",
            ),
            ("rtsp://admin:secret@10.0.0.2", "rtsp://admin:***@10.0.0.2"),
            (
                "error: rtsp://a:b@h1/x: gave up; also 'rtsps://c:d@h2:322' failed",
                "error: rtsp://a:***@h1/x: gave up; also 'rtsps://c:***@h2:322' failed",
            ),
            (
                "http://cam/video.mjpg?user=admin&pwd=s3cret&fps=5",
                "http://cam/video.mjpg?user=admin&pwd=***&fps=5",
            ),
            (
                "rtsp://u:p@cam/live?token=abc def",
                "rtsp://u:***@cam/live?token=*** def",
            ),
            (
                "rtsp://admin:pa/ss@cam.local/stream and more",
                "rtsp://admin:***@cam.local/stream and more",
            ),
            ("rtsp://admin:a/b@c@cam/x", "rtsp://admin:***@cam/x"),
        ];
        for (input, expected) in cases {
            assert_eq!(credentials(input), expected, "{input}");
        }
    }

    #[test]
    fn text_without_a_password_is_unchanged_and_borrowed() {
        for text in [
            "rtsp://admin@cam/stream",
            "rtsp://cam:554/stream",
            "file:///videos/a:b@c.mp4",
            "testsrc://ball?frames=10",
            "no url here: a@b",
            "rtsp://:@host/",
            "",
            "://",
            "http://cam/video?user=admin&fps=5",
            "http://cam:8080/users/a@b",
            "http://cam/a:b/c@d",
            "http://[::1]:8080/u/a@b",
            "expected mqtt:// or mqtts://[user[:password]@]host[:port]/topic",
            "rtsp://cam:554/live/ch1",
            "a?password=x without a url",
        ] {
            assert!(
                matches!(credentials(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn the_writer_redacts_each_write() {
        use std::io::Write;
        let mut out = Redacting(Vec::new());
        writeln!(out, "connecting to rtsp://admin:hunter2@cam/x").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "connecting to rtsp://admin:***@cam/x\n"
        );
    }
}
