//! The pinned project config as the state machine reads it: config group ids
//! and the matcher from (Gerrit host, repo, ref) to config groups (the
//! original's `cfgmatcher`).

use regex::Regex;

use crate::proto::{ConfigGroup, ProjectConfig};

/// The ref watched by a repo whose `ref_regexp` list is empty: exactly
/// `refs/heads/master`, as the original's matcher (`defaultRefRegexpInclude`)
/// and its config doc (luci-pm-head.md R8).
pub const DEFAULT_REF_REGEXP: &str = "refs/heads/master";

/// The full config group id `"<hash>/<name>"`.
pub fn config_group_id(hash: &str, name: &str) -> String {
    format!("{hash}/{name}")
}

/// Splits a config group id into `(hash, name)` at the first `/`; an id
/// without `/` is all hash.
pub fn split_config_group_id(id: &str) -> (&str, &str) {
    id.split_once('/').unwrap_or((id, ""))
}

/// A config group of a config by its index, if it exists.
pub fn group_at(config: &ProjectConfig, index: i32) -> Option<&ConfigGroup> {
    usize::try_from(index)
        .ok()
        .and_then(|i| config.config_groups.get(i))
}

/// Strips the scheme and trailing slash a config may write around a host.
fn normalise_host(host: &str) -> &str {
    let host = host.strip_prefix("https://").unwrap_or(host);
    host.strip_suffix('/').unwrap_or(host)
}

/// A full-match regexp built from a disjunction of regexps, as the original
/// builds `^((r1)|(r2))$`.
fn full_match_regex(patterns: &[String]) -> Result<Regex, regex::Error> {
    let alternatives: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
    Regex::new(&format!("^(?:{})$", alternatives.join("|")))
}

/// One (config group, host, repo) watch with its compiled ref filters.
#[derive(Debug)]
struct Watch {
    group_index: i32,
    fallback: bool,
    host: String,
    repo: String,
    /// `None` when the include regexps don't compile: the watch matches nothing.
    include: Option<Regex>,
    /// `None` when the config has no exclusions (or they don't compile).
    exclude: Option<Regex>,
}

/// Matches a CL's (host, repo, ref) to config groups of one config.
#[derive(Debug)]
pub struct Matcher {
    watches: Vec<Watch>,
}

impl Matcher {
    /// Compiles the matcher of a config; problems are appended to `trace`.
    pub fn new(config: &ProjectConfig, trace: &mut Vec<String>) -> Matcher {
        let mut watches = Vec::new();
        for (index, group) in config.config_groups.iter().enumerate() {
            let group_index = i32::try_from(index).expect("fewer than 2^31 config groups");
            for gerrit in &group.gerrit {
                for repo in &gerrit.projects {
                    let include_patterns = if repo.ref_regexp.is_empty() {
                        vec![DEFAULT_REF_REGEXP.to_string()]
                    } else {
                        repo.ref_regexp.clone()
                    };
                    let include = match full_match_regex(&include_patterns) {
                        Ok(re) => Some(re),
                        Err(err) => {
                            trace.push(format!(
                                "config {}: group {:?} repo {:?}: invalid ref_regexp, the watch matches nothing: {err}",
                                config.hash, group.name, repo.name
                            ));
                            None
                        }
                    };
                    let exclude = if repo.ref_regexp_exclude.is_empty() {
                        None
                    } else {
                        match full_match_regex(&repo.ref_regexp_exclude) {
                            Ok(re) => Some(re),
                            Err(err) => {
                                trace.push(format!(
                                    "config {}: group {:?} repo {:?}: invalid ref_regexp_exclude, ignored: {err}",
                                    config.hash, group.name, repo.name
                                ));
                                None
                            }
                        }
                    };
                    watches.push(Watch {
                        group_index,
                        fallback: group.fallback,
                        host: normalise_host(&gerrit.host).to_string(),
                        repo: repo.name.clone(),
                        include,
                        exclude,
                    });
                }
            }
        }
        Matcher { watches }
    }

    /// Indexes of the groups watching (host, repo, ref), in config order:
    /// the matching non-fallback groups, or the fallback group if no
    /// non-fallback group matches.
    pub fn match_groups(
        &self,
        host: &str,
        repo: &str,
        git_ref: &str,
        trace: &mut Vec<String>,
    ) -> Vec<i32> {
        let mut matched = Vec::new();
        let mut fallback: Option<i32> = None;
        for watch in &self.watches {
            if watch.host != host || watch.repo != repo {
                continue;
            }
            let included = watch
                .include
                .as_ref()
                .is_some_and(|re| re.is_match(git_ref));
            let excluded = watch
                .exclude
                .as_ref()
                .is_some_and(|re| re.is_match(git_ref));
            if !included || excluded {
                continue;
            }
            if watch.fallback {
                match fallback {
                    // The original panics on an invalid config with two
                    // matching fallback groups; we keep the first one.
                    Some(first) if first != watch.group_index => trace.push(format!(
                        "config has two fallback groups (#{first} and #{}) matching {host}/{repo} {git_ref}; using the first",
                        watch.group_index
                    )),
                    Some(_) => {}
                    None => fallback = Some(watch.group_index),
                }
            } else {
                matched.push(watch.group_index);
            }
        }
        if matched.is_empty() {
            if let Some(index) = fallback {
                matched.push(index);
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GerritWatch, RepoWatch};

    fn group(name: &str, refs: &[&str], fallback: bool) -> ConfigGroup {
        ConfigGroup {
            name: name.into(),
            gerrit: vec![GerritWatch {
                host: "c-review.example.com".into(),
                projects: vec![RepoWatch {
                    name: "repo/a".into(),
                    ref_regexp: refs.iter().map(|r| r.to_string()).collect(),
                    ref_regexp_exclude: vec![],
                }],
            }],
            fallback,
            ..Default::default()
        }
    }

    #[test]
    fn fallback_only_when_nothing_else_matches() {
        let config = ProjectConfig {
            hash: "h".into(),
            config_groups: vec![
                group("g0", &["refs/heads/main"], false),
                group("g1", &["refs/heads/.+"], true),
            ],
            ..Default::default()
        };
        let mut trace = vec![];
        let m = Matcher::new(&config, &mut trace);
        assert_eq!(
            m.match_groups(
                "c-review.example.com",
                "repo/a",
                "refs/heads/main",
                &mut trace
            ),
            vec![0]
        );
        assert_eq!(
            m.match_groups(
                "c-review.example.com",
                "repo/a",
                "refs/heads/other",
                &mut trace
            ),
            vec![1]
        );
        assert!(m
            .match_groups(
                "c-review.example.com",
                "repo/b",
                "refs/heads/main",
                &mut trace
            )
            .is_empty());
        // Full match: a prefix is not enough.
        assert!(
            m.match_groups(
                "c-review.example.com",
                "repo/a",
                "refs/heads/mainx",
                &mut trace
            ) == vec![1]
        );
        assert!(trace.is_empty());
    }

    #[test]
    fn empty_ref_regexp_means_master_and_bad_regexp_matches_nothing() {
        let config = ProjectConfig {
            hash: "h".into(),
            config_groups: vec![group("g0", &[], false), group("bad", &["("], false)],
            ..Default::default()
        };
        let mut trace = vec![];
        let m = Matcher::new(&config, &mut trace);
        assert_eq!(trace.len(), 1, "{trace:?}");
        assert_eq!(
            m.match_groups(
                "c-review.example.com",
                "repo/a",
                "refs/heads/master",
                &mut trace
            ),
            vec![0]
        );
        // Only master: `main` and a prefix of master are not watched.
        for git_ref in ["refs/heads/main", "refs/heads/mast"] {
            assert!(m
                .match_groups("c-review.example.com", "repo/a", git_ref, &mut trace)
                .is_empty());
        }
        assert!(m
            .match_groups(
                "c-review.example.com",
                "repo/a",
                "refs/heads/dev",
                &mut trace
            )
            .is_empty());
    }
}
