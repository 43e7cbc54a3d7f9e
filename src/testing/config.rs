//! Builders of project configs for scenarios.

use std::time::Duration;

use crate::proto::{
    project_config, CombineCls, ConfigGroup, GerritWatch, Mode, NewPatchsetRun, ProjectConfig,
    RepoWatch,
};

/// Builds a [`ProjectConfig`]: its config groups in order, its hash and state.
///
/// Made by [`super::Scenario::config`]; the hash defaults to `h<N>` for the
/// scenario's N-th config, the config eversion to N. Outside a scenario
/// (fixtures of other tests and benchmarks), [`ConfigBuilder::new`] and
/// [`ConfigBuilder::build`].
///
/// ```
/// use prjmanager::testing::ConfigBuilder;
///
/// let config = ConfigBuilder::new("h1", 1)
///     .group("main", |g| g.watch("g-review.example.com", "repo/a", "refs/heads/main"))
///     .build();
/// assert_eq!(config.config_groups[0].name, "main");
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    pub(crate) config: ProjectConfig,
}

impl ConfigBuilder {
    /// An enabled config version `eversion` with hash `hash`, without groups.
    pub fn new(hash: &str, eversion: i64) -> ConfigBuilder {
        ConfigBuilder {
            config: ProjectConfig {
                state: project_config::State::Enabled as i32,
                hash: hash.to_string(),
                eversion,
                config_groups: Vec::new(),
            },
        }
    }

    /// The config built.
    pub fn build(self) -> ProjectConfig {
        self.config
    }

    /// Appends a config group named `name`, shaped by `f`.
    pub fn group(mut self, name: &str, f: impl FnOnce(GroupBuilder) -> GroupBuilder) -> Self {
        let group = f(GroupBuilder {
            group: ConfigGroup {
                name: name.to_string(),
                ..ConfigGroup::default()
            },
        });
        self.config.config_groups.push(group.group);
        self
    }

    /// Sets the config hash (the prefix of the config group ids).
    pub fn hash(mut self, hash: &str) -> Self {
        self.config.hash = hash.to_string();
        self
    }

    /// Marks the project disabled in this config version.
    pub fn disabled(mut self) -> Self {
        self.config.state = project_config::State::Disabled as i32;
        self
    }

    /// Marks the project's config deleted.
    pub fn deleted(mut self) -> Self {
        self.config.state = project_config::State::Deleted as i32;
        self
    }
}

/// Builds one [`ConfigGroup`].
#[derive(Debug, Clone)]
pub struct GroupBuilder {
    group: ConfigGroup,
}

impl GroupBuilder {
    /// Watches `ref_regexp` of `repo` on the Gerrit `host` (adds to earlier watches).
    pub fn watch(self, host: &str, repo: &str, ref_regexp: &str) -> Self {
        self.add_watch(host, repo, vec![ref_regexp.to_string()])
    }

    /// Watches `repo` on the Gerrit `host` without any `ref_regexp`, which
    /// means exactly `refs/heads/master` (adds to earlier watches).
    pub fn watch_default_ref(self, host: &str, repo: &str) -> Self {
        self.add_watch(host, repo, Vec::new())
    }

    fn add_watch(mut self, host: &str, repo: &str, ref_regexp: Vec<String>) -> Self {
        let repo_watch = RepoWatch {
            name: repo.to_string(),
            ref_regexp,
            ref_regexp_exclude: Vec::new(),
        };
        match self.group.gerrit.iter_mut().find(|g| g.host == host) {
            Some(gerrit) => gerrit.projects.push(repo_watch),
            None => self.group.gerrit.push(GerritWatch {
                host: host.to_string(),
                projects: vec![repo_watch],
            }),
        }
        self
    }

    /// Makes the group the fallback group.
    pub fn fallback(mut self) -> Self {
        self.group.fallback = true;
        self
    }

    /// Combines dependent CLs into one Run after `stabilization_delay` (`combine_cls`).
    pub fn combine_cls(mut self, stabilization_delay: Duration) -> Self {
        self.group.combine_cls = Some(CombineCls {
            stabilization_delay: Some(pbjson_types::Duration {
                seconds: i64::try_from(stabilization_delay.as_secs())
                    .expect("a stabilization delay below 2^63 seconds"),
                nanos: i32::try_from(stabilization_delay.subsec_nanos())
                    .expect("sub-second nanoseconds fit in i32"),
            }),
        });
        self
    }

    /// Combines dependent CLs into one Run, leaving `stabilization_delay`
    /// unset (`combine_cls {}`): the triager reads an unset delay apart from
    /// a zero one (a CL's purge is due now, not at its CQ vote's time).
    pub fn combine_cls_unset_delay(mut self) -> Self {
        self.group.combine_cls = Some(CombineCls {
            stabilization_delay: None,
        });
        self
    }

    /// Gives the group a tryjob builder allowing `NEW_PATCHSET_RUN`.
    pub fn new_patchset_run(mut self) -> Self {
        self.group.new_patchset_run = Some(NewPatchsetRun {});
        self
    }

    /// Adds a custom run mode: a `Commit-Queue` vote of `cq_label_value`
    /// together with `triggering_label` = `triggering_value` by the same user
    /// at the same time triggers `name`.
    pub fn additional_mode(
        mut self,
        name: &str,
        cq_label_value: i32,
        triggering_label: &str,
        triggering_value: i32,
    ) -> Self {
        self.group.additional_modes.push(Mode {
            name: name.to_string(),
            cq_label_value,
            triggering_label: triggering_label.to_string(),
            triggering_value,
        });
        self
    }

    /// Sets `allow_submit_with_open_deps`.
    pub fn allow_submit_with_open_deps(mut self) -> Self {
        self.group.allow_submit_with_open_deps = true;
        self
    }
}
