//! HTML that is escaped by construction: markup can only come from string
//! literals (`&'static str`), and everything else — every name, path,
//! command line, user agent or user name an attacker chose — goes through
//! [`Html::text`], which escapes it for element content and quoted
//! attribute values alike. There is no way to add raw HTML made from data.

/// A page or fragment being written.
#[derive(Debug, Default)]
pub struct Html(String);

impl Html {
    pub fn new() -> Self {
        Html(String::with_capacity(4096))
    }

    /// Markup written in the source.
    pub fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Text from data, escaped: safe in element content and in a quoted
    /// attribute value.
    pub fn text(&mut self, s: &str) -> &mut Self {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                // Controls an attacker might use to confuse a reader (not
                // tab or newline) are shown as the replacement character.
                c if c.is_control() && c != '\n' && c != '\t' => self.0.push('\u{fffd}'),
                c => self.0.push(c),
            }
        }
        self
    }

    /// A number.
    pub fn num(&mut self, n: impl Into<u64>) -> &mut Self {
        self.0.push_str(&n.into().to_string());
        self
    }

    /// Another fragment, already escaped.
    pub fn append(&mut self, other: Html) -> &mut Self {
        self.0.push_str(&other.0);
        self
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_become_markup() {
        let mut h = Html::new();
        h.raw("<p title=\"")
            .text("\"><script>alert(1)</script>")
            .raw("\">")
            .text("<img src=x onerror=alert(1)> & 'x'\u{1b}[31m")
            .raw("</p>");
        assert_eq!(
            h.into_string(),
            "<p title=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\">&lt;img src=x onerror=alert(1)&gt; &amp; &#39;x&#39;\u{fffd}[31m</p>"
        );
    }
}
