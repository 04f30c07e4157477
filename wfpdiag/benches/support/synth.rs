//! A synthetic wfpdiag.xml of any size, for the parse bench and the peak-memory
//! measurement: the real filters and netEvent of the test data
//! (tests/data/astral-filters.xml, tests/data/uwp-case5-wfpdiag.xml), repeated
//! with fresh filter ids, ports and times. Never committed: generated on demand.

use std::io::{self, Write};

const FILTERS: &str = include_str!("../../tests/data/astral-filters.xml");
const CAPTURE: &str = include_str!("../../tests/data/uwp-case5-wfpdiag.xml");

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let a = text.find(start).unwrap_or(0);
    let b = text[a..].find(end).map_or(text.len(), |i| a + i + end.len());
    &text[a..b]
}

/// Writes about `bytes` bytes of wfpdiag.xml: half filters, half drops.
pub(crate) fn write_wfpdiag(out: &mut impl Write, bytes: u64) -> io::Result<u64> {
    let items: Vec<&str> = between(FILTERS, "\t<filters>\n", "\t</filters>\n")
        .split("\t\t<item>\n")
        .skip(1)
        .map(|s| s.trim_end_matches("\t</filters>\n"))
        .collect();
    let event = between(CAPTURE, "<netEvent>", "</netEvent>");
    let mut out = Counting { inner: out, written: 0 };
    out.put("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<wfpdiag>\n<initialState>\n<filters>\n")?;
    let mut id = 1_000_000u64;
    while out.written < bytes / 2 {
        for item in &items {
            id += 1;
            // Fresh id; the original id stays as a comment.
            let body = item.replacen("<filterId>", &format!("<filterId>{id}</filterId><!--"), 1).replacen(
                "</filterId>\n",
                "-->\n",
                1,
            );
            out.put("\t\t<item>\n")?;
            out.put(&body)?;
        }
    }
    out.put("</filters>\n</initialState>\n<events>\n")?;
    let mut n = 0u64;
    while out.written < bytes {
        n += 1;
        let e = event
            .replace("52956", &(1024 + n % 60_000).to_string())
            .replace("20:54:53.499Z", &format!("20:{:02}:{:02}.{:03}Z", (n / 60_000) % 60, (n / 1000) % 60, n % 1000));
        out.put(&e)?;
        out.put("\n")?;
    }
    out.put("</events>\n</wfpdiag>\n")?;
    out.inner.flush()?;
    Ok(out.written)
}

struct Counting<'a, W> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, s: &str) -> io::Result<()> {
        self.written += s.len() as u64;
        self.inner.write_all(s.as_bytes())
    }
}
