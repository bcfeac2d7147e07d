//! Which price rows price a model name. Providers answer with dated names (`gpt-4o-2024-08-06`)
//! that admins do not list one by one: a price row may name a family, a name ending in `*`
//! (`gpt-4o*`), which prices every model name it prefixes. A model's own name comes first; else
//! the longest family that prefixes it; else the model has no price.

use std::borrow::Cow;
use std::collections::HashSet;

/// The model names that have price rows for a tenant (its own and the shared ones).
#[derive(Debug, Default)]
pub struct PricedNames {
    exact: HashSet<String>,
    /// Families without their `*`, longest first.
    families: Vec<String>,
}

impl PricedNames {
    pub fn new(names: impl IntoIterator<Item = String>) -> PricedNames {
        let mut p = PricedNames::default();
        for n in names {
            match n.strip_suffix('*') {
                Some(prefix) if !prefix.is_empty() => p.families.push(prefix.to_string()),
                _ => {
                    p.exact.insert(n);
                }
            }
        }
        p.families.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        p.families.dedup();
        p
    }

    /// The name of the price rows that price `model`: its own, else its longest family (with
    /// the `*`), else None.
    pub fn price_name<'a>(&self, model: &'a str) -> Option<Cow<'a, str>> {
        if self.exact.contains(model) {
            return Some(Cow::Borrowed(model));
        }
        self.families
            .iter()
            .find(|f| model.starts_with(f.as_str()))
            .map(|f| Cow::Owned(format!("{f}*")))
    }

    /// Heap bytes held, approximately (its cache is bounded in bytes).
    pub fn heap_bytes(&self) -> usize {
        let s = std::mem::size_of::<String>();
        self.exact.iter().map(|n| n.len() + 2 * s + 1).sum::<usize>()
            + self.families.iter().map(|n| n.len() + s).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> PricedNames {
        PricedNames::new(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn own_name_first_then_the_longest_family() {
        let p = names(&["gpt-4o", "gpt-4o*", "gpt-4o-mini*", "gpt-4o-mini-2024", "claude*"]);
        assert_eq!(p.price_name("gpt-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(p.price_name("gpt-4o-2024-08-06").as_deref(), Some("gpt-4o*"));
        assert_eq!(p.price_name("gpt-4o-mini-2024-07-18").as_deref(), Some("gpt-4o-mini*"));
        assert_eq!(p.price_name("gpt-4o-mini-2024").as_deref(), Some("gpt-4o-mini-2024"));
        assert_eq!(p.price_name("claude-3-5-sonnet").as_deref(), Some("claude*"));
        assert_eq!(
            p.price_name("gpt-4").as_deref(),
            None,
            "a family prefixes, it does not suffix"
        );
        assert_eq!(p.price_name("o1").as_deref(), None);
        // A family prices the name that is exactly its prefix too.
        assert_eq!(p.price_name("claude").as_deref(), Some("claude*"));
    }

    #[test]
    fn a_lone_star_is_a_name_not_a_family_of_everything() {
        let p = names(&["*"]);
        assert_eq!(p.price_name("anything"), None);
        assert_eq!(p.price_name("*").as_deref(), Some("*"));
    }
}
