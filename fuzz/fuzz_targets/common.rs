//! Input format shared by the targets: UTF-8 fields separated by the byte
//! 0xFF, which never occurs in UTF-8, so that a field can hold any string
//! (dots, wildcards, line breaks, NUL...) and the seed files stay readable.

/// The fields of `data`, or `None` when one is not UTF-8 (the APIs under
/// test take `&str`).
pub fn fields(data: &[u8]) -> Option<Vec<&str>> {
    data.split(|&b| b == 0xff)
        .map(|f| std::str::from_utf8(f).ok())
        .collect()
}
