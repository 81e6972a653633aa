//! Shared by the fuzz targets: the input container they read.
//!
//! An input is split into sections by lines that start with `%%`: `%%<tag>\n` starts a
//! section named `<tag>` that runs to the next such line. Text seeds stay readable (a real
//! conflist, a real state file, each under its tag) and libFuzzer's mutations (byte flips,
//! splices, dictionary words) work on them directly; a section tagged `arbitrary` drives the
//! `arbitrary`-derived generators of each target instead, for structured values that byte
//! mutation of JSON would rarely reach.

/// The sections of `data`, in order: `(tag, body)`. Bytes before the first marker are a
/// section with the empty tag.
pub fn sections(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut tag: &[u8] = b"";
    let mut start = 0;
    let mut line_start = 0;
    while line_start <= data.len() {
        let line_end = data[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| line_start + i);
        let line = &data[line_start..line_end];
        if let Some(next_tag) = line.strip_prefix(b"%%") {
            out.push((tag, trim_newline(&data[start..line_start])));
            tag = next_tag;
            start = (line_end + 1).min(data.len());
        }
        line_start = line_end + 1;
    }
    out.push((tag, &data[start.min(data.len())..]));
    out.retain(|(t, b)| !(t.is_empty() && b.is_empty()));
    out
}

fn trim_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

/// `%%<tag> <arg>`: the tag and its argument.
pub fn split_tag(tag: &[u8]) -> (&[u8], &[u8]) {
    match tag.iter().position(|&b| b == b' ') {
        Some(i) => (&tag[..i], &tag[i + 1..]),
        None => (tag, b""),
    }
}
