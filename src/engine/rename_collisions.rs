//! Rename rules that give two source names one destination name, found
//! from the rules alone (`policy check`), before any catalog is read: a
//! rule whose template refers to no group while its pattern matches more
//! than one name, and two rules that give names of the very same form
//! (`a/(.*)` → `x-$1` and `b/(.*)` → `x-$1`: `a/web` and `b/web` both
//! become `x-web`). Names that collide only through what a registry holds
//! are still found at run time ([`super::rename::Rename::check_names`]).
//! It reads rules only: it never talks to a registry.

use regex::Regex;

use super::rename::{Part, Piece, RenameRule, pattern_parts, template_pieces};

/// A value tried in the groups of two rules of one form, for an example.
const SAMPLE: &str = "app";

/// Why `rule` alone renames several names to one, when the rule says so.
pub fn merges_names(rule: &RenameRule) -> Option<String> {
    let refers = template_pieces(&rule.template).iter().any(|p| matches!(p, Piece::Group(_)));
    let literal = pattern_parts(&rule.pattern).is_ok_and(|parts| parts.iter().all(|p| matches!(p, Part::Text(_))));
    (!refers && !literal).then(|| {
        format!(
            "rule {:?} → {:?} renames every name its pattern matches to the one name {:?}: two source repositories would collide \
             (use a capture group in the template, e.g. '$1', or a plain name as the pattern)",
            rule.pattern, rule.template, rule.template
        )
    })
}

/// The form of the names `rule` gives: its template with each group
/// reference replaced by that group's own pattern; `None` when the rule is
/// not literal text and groups (then it cannot be compared).
fn form(rule: &RenameRule) -> Option<(String, Vec<Part>)> {
    let parts = pattern_parts(&rule.pattern).ok()?;
    let mut out = String::new();
    for piece in template_pieces(&rule.template) {
        match piece {
            Piece::Text(t) => out.push_str(&regex::escape(&t)),
            Piece::Group(g) => {
                let n = rule.group_index(&g)?;
                let inner = parts.iter().find_map(|p| match p {
                    Part::Group(k, inner) if *k == n => Some(inner.as_str()),
                    _ => None,
                })?;
                out.push_str(&format!("({inner})"));
            }
        }
    }
    Some((out, parts))
}

/// A source name `parts` matches with [`SAMPLE`] in every group, when it does.
fn example(parts: &[Part]) -> Option<String> {
    let mut name = String::new();
    for p in parts {
        match p {
            Part::Text(t) => name.push_str(t),
            Part::Group(_, inner) => {
                Regex::new(&format!("^(?:{inner})$")).ok()?.is_match(SAMPLE).then_some(())?;
                name.push_str(SAMPLE);
            }
        }
    }
    Some(name)
}

/// Pairs of rules (their positions) that give names of the same form, each
/// with a message naming both rules and, when one is found, two names that collide.
pub fn same_form(rules: &[RenameRule]) -> Vec<(usize, usize, String)> {
    let forms: Vec<Option<(String, Vec<Part>)>> = rules.iter().map(form).collect();
    let mut out = Vec::new();
    for (j, b) in forms.iter().enumerate() {
        let Some((form_b, parts_b)) = b else { continue };
        let Some(i) = forms[..j].iter().position(|a| a.as_ref().is_some_and(|(f, _)| f == form_b)) else { continue };
        let parts_a = forms[i].as_ref().map(|(_, p)| p.as_slice()).unwrap_or_default();
        let collide = match (example(parts_a), example(parts_b)) {
            (Some(x), Some(y)) if x != y => format!(": {x} and {y} would both become {}", rules[i].apply_name(&x)),
            _ => String::new(),
        };
        out.push((
            i,
            j,
            format!(
                "rule {} → {} gives names of the form an earlier rule ({} → {}) gives{collide}: refused (make their templates differ, e.g. by a prefix)",
                rules[j].pattern, rules[j].template, rules[i].pattern, rules[i].template
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(r: &str) -> RenameRule {
        RenameRule::parse(r).unwrap()
    }

    #[test]
    fn a_template_without_groups_merges_what_its_pattern_matches() {
        assert!(merges_names(&rule("[a-z]+/app=app")).unwrap().contains("to the one name \"app\""));
        assert!(merges_names(&rule("team/(.*)=flat")).is_some());
        assert!(merges_names(&rule("library/nginx=mirror/nginx")).is_none(), "one name to one name");
        assert!(merges_names(&rule("team/(.*)=flat-$1")).is_none());
    }

    #[test]
    fn two_rules_of_one_form_collide() {
        let rules = [rule("a/(.*)=x-$1"), rule("b/(.*)=x-$1"), rule("c/(.*)=y-$1"), rule("team/([^/]+)/([^/]+)=team-$1-$2")];
        let found = same_form(&rules);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].0, found[0].1), (0, 1));
        assert!(found[0].2.contains("a/app and b/app would both become x-app"), "{}", found[0].2);
        // Different group patterns: other forms, not refused.
        assert!(same_form(&[rule("a/([0-9]+)=n-$1"), rule("b/([a-z]+)=n-$1")]).is_empty());
        assert!(same_form(&[rule("team/([^/]+)/([^/]+)=team-$1-$2"), rule("(base)=$1-dr")]).is_empty());
    }
}
