//! # Did you mean…?

/// The candidate closest to `word`, if any is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_ignores_far_words() {
        assert_eq!(nearest("packges", &["packages", "suite"]), Some("packages"));
        assert_eq!(nearest("zzzzzz", &["packages", "suite"]), None);
    }
}
