//! Repository renaming: ordered `REGEX → TEMPLATE` rules, the first rule
//! whose pattern matches a name decides it (`team/(.*)` → `mirror-$1`); a
//! name no rule matches keeps its name. Rules see names relative to the
//! source prefix and give names relative to the destination prefix.
//!
//! This is the one place where a source name becomes a destination name
//! beyond the prefixes (`copy`, `migrate --rename`, a policy's
//! `repositories.rename`) and where a destination name is mapped back
//! (failover, failback, verify, prune and events of a reversed policy all
//! go through [`crate::engine::plan::RepoMapping`], which calls this). It
//! decides names only: it never talks to a registry.
//!
//! Inversion: a rule can be mapped back when its pattern is literal text
//! and capture groups only (plus `^`/`$`), and its template uses every
//! group exactly once; the inverse rule matches the template's shape with
//! the groups' own patterns and rebuilds the original name. Whether two
//! names collide or a name does not come back is a property of the names a
//! registry holds, so it is checked against the catalog at run time
//! ([`Rename::check_names`]).

use std::collections::HashMap;
use std::fmt;

use regex::Regex;

/// One rule: a pattern (always over the whole name: `^` and `$` are
/// implied) and a template (`$1`, `${1}`, `${name}`, `$$` for a dollar).
#[derive(Debug, Clone)]
pub struct RenameRule {
    /// As written.
    pub pattern: String,
    pub template: String,
    regex: Regex,
}

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    #[error("bad rename rule {0:?}: write REGEX=TEMPLATE (e.g. 'team/(.*)=mirror/team-$1')")]
    Form(String),
    #[error("bad regex {pattern:?}: {message}")]
    Regex { pattern: String, message: String },
    #[error("template {template:?} refers to ${group}, which pattern {pattern:?} does not capture")]
    UnknownGroup { pattern: String, template: String, group: String },
    #[error("rule {pattern:?} → {template:?} cannot be mapped back for failover/failback: {why}")]
    NotInvertible { pattern: String, template: String, why: String },
}

/// The pattern without a leading `^` and a trailing (unescaped) `$`: a
/// rule always matches the whole name, so they are implied.
fn unanchored(pattern: &str) -> &str {
    let body = pattern.strip_prefix('^').unwrap_or(pattern);
    body.strip_suffix('$').filter(|b| !b.ends_with('\\')).unwrap_or(body)
}

/// The regex of a rule: the whole name.
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{})$", unanchored(pattern)))
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Text(String),
    /// A group by number or name.
    Group(String),
}

pub(super) fn template_pieces(template: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            text.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                text.push('$');
            }
            Some('{') => {
                chars.next();
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                out.extend((!text.is_empty()).then(|| Piece::Text(std::mem::take(&mut text))));
                out.push(Piece::Group(name));
            }
            Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || c == '_') {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                out.extend((!text.is_empty()).then(|| Piece::Text(std::mem::take(&mut text))));
                out.push(Piece::Group(name));
            }
            _ => text.push('$'),
        }
    }
    out.extend((!text.is_empty()).then_some(Piece::Text(text)));
    out
}

/// A top-level part of a pattern made of literals and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    Text(String),
    /// The group's number and its inner pattern.
    Group(usize, String),
}

/// The pattern as literal text and top-level capture groups, or why it is
/// something else.
pub(super) fn pattern_parts(pattern: &str) -> Result<Vec<Part>, String> {
    let body = unanchored(pattern);
    let chars: Vec<char> = body.chars().collect();
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut group = 0;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else { return Err("it ends with a lone backslash".into()) };
                if next.is_ascii_alphanumeric() {
                    return Err(format!("\\{next} is not literal text"));
                }
                text.push(next);
                i += 2;
            }
            '(' => {
                // Find the matching parenthesis, skipping escapes and classes.
                let (mut depth, mut j, mut class) = (0usize, i, false);
                let mut inner_groups = 0;
                loop {
                    let Some(&c) = chars.get(j) else { return Err("a parenthesis is not closed".into()) };
                    match c {
                        '\\' => j += 1,
                        '[' if !class => class = true,
                        ']' if class => class = false,
                        '(' if !class => {
                            depth += 1;
                            if j > i && chars.get(j + 1) != Some(&'?') {
                                inner_groups += 1;
                            }
                        }
                        ')' if !class => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let whole: String = chars[i + 1..j].iter().collect();
                let inner = if let Some(rest) = whole.strip_prefix("?P<").or_else(|| whole.strip_prefix("?<")) {
                    match rest.find('>') {
                        Some(k) => rest[k + 1..].to_string(),
                        None => return Err("a group name is not closed".into()),
                    }
                } else if whole.starts_with('?') {
                    return Err(format!("({whole}) is not a capture group"));
                } else {
                    whole
                };
                if inner_groups > 0 {
                    return Err("a group holds another capture group".into());
                }
                group += 1;
                out_text(&mut parts, &mut text);
                parts.push(Part::Group(group, inner));
                i = j + 1;
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | ':' | '@' | '#' | '%' | ',' | '=' | '~') => {
                text.push(c);
                i += 1;
            }
            c => return Err(format!("{c:?} outside a group is not literal text")),
        }
    }
    out_text(&mut parts, &mut text);
    Ok(parts)
}

fn out_text(parts: &mut Vec<Part>, text: &mut String) {
    if !text.is_empty() {
        parts.push(Part::Text(std::mem::take(text)));
    }
}

impl RenameRule {
    /// A rule from its pattern and template; checks that the template's
    /// groups exist.
    pub fn new(pattern: &str, template: &str) -> Result<RenameRule, RenameError> {
        let regex = anchored(pattern)
            .map_err(|e| RenameError::Regex { pattern: pattern.into(), message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" ") })?;
        let names: Vec<String> = regex.capture_names().enumerate().map(|(i, n)| n.map_or(i.to_string(), str::to_string)).collect();
        let numbered = regex.captures_len();
        for piece in template_pieces(template) {
            if let Piece::Group(g) = piece {
                let known = g.parse::<usize>().is_ok_and(|n| n < numbered) || names.contains(&g);
                if !known {
                    return Err(RenameError::UnknownGroup { pattern: pattern.into(), template: template.into(), group: g });
                }
            }
        }
        Ok(RenameRule { pattern: pattern.into(), template: template.into(), regex })
    }

    /// `REGEX=TEMPLATE` (the last `=` splits: templates hold no `=`).
    pub fn parse(rule: &str) -> Result<RenameRule, RenameError> {
        let (pattern, template) = rule.rsplit_once('=').ok_or_else(|| RenameError::Form(rule.into()))?;
        if pattern.is_empty() || template.is_empty() {
            return Err(RenameError::Form(rule.into()));
        }
        RenameRule::new(pattern, template)
    }

    /// A rule that renames exactly one name.
    pub fn exact(from: &str, to: &str) -> RenameRule {
        let pattern = format!("^{}$", regex::escape(from));
        let template = to.replace('$', "$$");
        let regex = Regex::new(&pattern).unwrap_or_else(|_| Regex::new("^$").expect("a valid regex"));
        RenameRule { pattern, template, regex }
    }

    /// The name this rule gives `name` (`name` itself when it does not match).
    pub fn apply_name(&self, name: &str) -> String {
        self.apply(name).unwrap_or_else(|| name.to_string())
    }

    /// The number of the group a template reference names (`1`, `name`).
    pub(super) fn group_index(&self, reference: &str) -> Option<usize> {
        reference.parse::<usize>().ok().or_else(|| self.regex.capture_names().position(|n| n == Some(reference)))
    }

    fn apply(&self, name: &str) -> Option<String> {
        let caps = self.regex.captures(name)?;
        // Our own expansion (not `Captures::expand`): `$1-$2` reads as
        // group 1, "-", group 2, and the inverse uses the same reading.
        let mut built = String::new();
        for piece in template_pieces(&self.template) {
            match piece {
                Piece::Text(t) => built.push_str(&t),
                Piece::Group(g) => {
                    let m = g.parse::<usize>().ok().and_then(|n| caps.get(n)).or_else(|| caps.name(&g));
                    built.push_str(m.map_or("", |m| m.as_str()));
                }
            }
        }
        Some(built)
    }

    /// The rule that maps this rule's output back, or why there is none.
    pub fn inverse(&self) -> Result<RenameRule, RenameError> {
        let refuse = |why: String| RenameError::NotInvertible { pattern: self.pattern.clone(), template: self.template.clone(), why };
        let parts = pattern_parts(&self.pattern).map_err(refuse)?;
        let names: HashMap<String, usize> =
            self.regex.capture_names().enumerate().filter_map(|(i, n)| n.map(|n| (n.to_string(), i))).collect();
        let groups = parts.iter().filter(|p| matches!(p, Part::Group(..))).count();
        let mut used = vec![0usize; groups + 1];
        let mut inverse_pattern = String::from("^");
        for piece in template_pieces(&self.template) {
            match piece {
                Piece::Text(t) => inverse_pattern.push_str(&regex::escape(&t)),
                Piece::Group(g) => {
                    let n = g.parse::<usize>().ok().or_else(|| names.get(&g).copied()).unwrap_or(0);
                    if n == 0 || n > groups {
                        return Err(refuse(format!("the template uses ${g}, which is the whole match, not a group")));
                    }
                    used[n] += 1;
                    let inner = parts.iter().find_map(|p| match p {
                        Part::Group(k, inner) if *k == n => Some(inner.clone()),
                        _ => None,
                    });
                    inverse_pattern.push_str(&format!("(?P<g{n}>{})", inner.unwrap_or_default()));
                }
            }
        }
        inverse_pattern.push('$');
        if let Some(n) = (1..=groups).find(|&n| used[n] != 1) {
            return Err(refuse(format!("the template must use group {n} exactly once (it uses it {} times)", used[n])));
        }
        let mut inverse_template = String::new();
        for p in &parts {
            match p {
                Part::Text(t) => inverse_template.push_str(&t.replace('$', "$$")),
                Part::Group(n, _) => inverse_template.push_str(&format!("${{g{n}}}")),
            }
        }
        let regex = Regex::new(&inverse_pattern).map_err(|e| refuse(format!("its inverse pattern does not compile: {e}")))?;
        Ok(RenameRule { pattern: inverse_pattern, template: inverse_template, regex })
    }
}

impl fmt::Display for RenameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.pattern, self.template)
    }
}

/// Ordered rules, first match wins; with their inverse when every rule has one.
#[derive(Debug, Clone, Default)]
pub struct Rename {
    rules: Vec<RenameRule>,
    /// The inverse rules in the same order, or why they cannot exist.
    inverse: Option<Result<Vec<RenameRule>, RenameError>>,
}

/// A name that broke a rename at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameConflict {
    /// The source names involved (one, or two that collide).
    pub sources: Vec<String>,
    pub message: String,
}

impl PartialEq for Rename {
    fn eq(&self, other: &Rename) -> bool {
        self.rules.len() == other.rules.len()
            && self.rules.iter().zip(&other.rules).all(|(a, b)| a.pattern == b.pattern && a.template == b.template)
    }
}

impl Eq for Rename {}

impl Rename {
    pub fn new(rules: Vec<RenameRule>) -> Rename {
        let inverse = (!rules.is_empty()).then(|| rules.iter().map(RenameRule::inverse).collect::<Result<Vec<_>, _>>());
        Rename { rules, inverse }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[RenameRule] {
        &self.rules
    }

    /// The new name of `name` (unchanged when no rule matches).
    pub fn apply(&self, name: &str) -> String {
        self.rules.iter().find_map(|r| r.apply(name)).unwrap_or_else(|| name.to_string())
    }

    /// The rules that map names back, or why they cannot exist.
    pub fn reversed(&self) -> Result<Rename, RenameError> {
        match &self.inverse {
            None => Ok(Rename::default()),
            Some(Ok(inverse)) => {
                let back = Rename { rules: inverse.clone(), inverse: Some(Ok(self.rules.clone())) };
                Ok(back)
            }
            Some(Err(e)) => Err(e.clone()),
        }
    }

    /// Check the names a registry holds (relative to the prefix): two
    /// names that get one destination name collide; with `round_trip`, a
    /// name whose destination name does not map back to it is refused.
    pub fn check_names<'a>(&self, names: impl IntoIterator<Item = &'a str>, round_trip: bool) -> Vec<NameConflict> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        let back = if round_trip { Some(self.reversed()) } else { None };
        let mut out = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for name in names {
            let dest = self.apply(name);
            if let Some(other) = seen.get(&dest) {
                if other != name {
                    out.push(NameConflict {
                        sources: vec![other.clone(), name.to_string()],
                        message: format!("repositories {other} and {name} would both be renamed to {dest}: refused (change repositories.rename / --rename so each name gets its own)"),
                    });
                }
                continue;
            }
            seen.insert(dest.clone(), name.to_string());
            match &back {
                Some(Ok(back)) => {
                    let again = back.apply(&dest);
                    if again != name {
                        out.push(NameConflict {
                            sources: vec![name.to_string()],
                            message: format!("repository {name} is renamed to {dest}, which maps back to {again}, not to {name}: refused (failover/failback could not find it again)"),
                        });
                    }
                }
                Some(Err(e)) => out.push(NameConflict { sources: vec![name.to_string()], message: e.to_string() }),
                None => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> Rename {
        Rename::new(list.iter().map(|r| RenameRule::parse(r).unwrap()).collect())
    }

    #[test]
    fn first_match_wins_and_others_keep_their_names() {
        let r = rules(&["library/(.*)=mirror/$1", "team/([^/]+)/([^/]+)=team-$1-$2", "(.*)=$1-dr"]);
        assert_eq!(r.apply("library/nginx"), "mirror/nginx");
        assert_eq!(r.apply("team/a/b"), "team-a-b");
        assert_eq!(r.apply("other"), "other-dr");
        assert_eq!(rules(&["library/(.*)=mirror/$1"]).apply("other/x"), "other/x");
        assert_eq!(rules(&["(?P<n>.*)=${n}_x"]).apply("app"), "app_x");
    }

    #[test]
    fn inverse_maps_back_exactly() {
        let r = rules(&["library/(.*)=mirror/$1", "team/([^/]+)/([^/]+)=team-$1-$2", "(.*)=$1-dr"]);
        let back = r.reversed().unwrap();
        for name in ["library/nginx", "library/a/b", "team/a/b", "other", "x/y"] {
            assert_eq!(back.apply(&r.apply(name)), name, "{name} → {}", r.apply(name));
        }
        assert!(r.check_names(["library/nginx", "team/a/b", "other"], true).is_empty());
    }

    #[test]
    fn collisions_and_lost_names_are_refused_with_both_names() {
        let r = rules(&["team/([^/]+)/([^/]+)=team-$1-$2"]);
        let c = r.check_names(["team/a-b/c", "team/a/b-c"], false);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].sources, ["team/a-b/c", "team/a/b-c"]);
        assert!(c[0].message.contains("team-a-b-c"), "{}", c[0].message);
        // the unchanged name `team-x-y` maps "back" to team/x/y
        let c = r.check_names(["team-x-y"], true);
        assert_eq!(c.len(), 1, "{c:?}");
    }

    #[test]
    fn rules_that_cannot_be_inverted_say_why() {
        for (rule, why) in [
            ("team/.*/(.*)=$1", "outside a group"),
            ("team/(.*)/(.*)=$2", "exactly once"),
            ("(a|b)/(.*)=x-$2-$1-$1", "exactly once"),
            ("(?:a)/(.*)=$1", "not a capture group"),
        ] {
            let e = RenameRule::parse(rule).unwrap().inverse().unwrap_err().to_string();
            assert!(e.contains(why), "{rule}: {e}");
        }
        assert!(matches!(RenameRule::parse("a/(.*)=$2"), Err(RenameError::UnknownGroup { .. })));
        assert!(matches!(RenameRule::parse("nothing"), Err(RenameError::Form(_))));
        assert!(RenameRule::exact("a/b", "c/d").inverse().is_ok());
        assert_eq!(Rename::new(vec![RenameRule::exact("a.b/c", "x")]).apply("aXb/c"), "aXb/c");
    }
}
