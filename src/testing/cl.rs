//! Builder of CL entity versions (`ChangeList`) for scenarios.

use crate::proto::Timestamp;

use super::{t, HOST};
use crate::domain::{self, config::Matcher};
use crate::proto::{
    dep::DepKind, gerrit_change::ChangeStatus, ApplicableConfig, ApplicableProject, ChangeList,
    ClError, Dep, Footer, GerritChange, NoAccess, ProjectConfig, Snapshot, Vote,
};

/// The Gerrit account id used for an email: `N` for `user-N@…`, otherwise
/// a stable hash of the email (FNV-1a, 6 digits), so that votes and owners
/// need only an email in scenarios.
pub fn account_id(email: &str) -> i64 {
    let local = email.split('@').next().unwrap_or_default();
    if let Some(n) = local.strip_prefix("user-").and_then(|n| n.parse().ok()) {
        return n;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in email.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::try_from(hash % 900_000).expect("below 900000") + 100_000
}

/// How the CL's applicable config (the projects watching it) is set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Watching {
    /// Watched by the scenario's project; the groups are the explicit ones
    /// or, if none, those the latest config's watches match.
    ThisProject,
    /// Watched by these projects (the scenario's project among them or not).
    Projects(Vec<String>),
    /// Watched by these projects, each in these config groups (full ids
    /// `<hash>/<name>`), as given.
    Groups(Vec<(String, Vec<String>)>),
    /// No applicable config: the PM's access to the CL is unknown.
    Unknown,
}

/// Builds the next version of one CL entity.
///
/// A CL's first version has these defaults: patchset 1 of change `clid` on
/// `g-review.example.com`, repo `repo/a`, ref `refs/heads/main`, revision
/// `rev-<clid:06>-<patchset:03>` uploaded at `T0-1h`, owner
/// `user-1@example.com`, status NEW, no votes, no deps, eversion 1. A later
/// version starts from the previous one with the eversion bumped and the
/// snapshot fresh (not outdated).
///
/// Made by [`super::Scenario::cl`]. Outside a scenario (fixtures of other
/// tests and benchmarks), [`ClBuilder::new`] and [`ClBuilder::build`].
///
/// ```
/// use prjmanager::testing::{t, ClBuilder, ConfigBuilder};
///
/// let config = ConfigBuilder::new("h1", 1)
///     .group("main", |g| g.watch("g-review.example.com", "repo/a", "refs/heads/main"))
///     .build();
/// let cl = ClBuilder::new("v8", 7)
///     .cq_vote(1, "user-2@example.com", t(0))
///     .build(Some(&config));
/// let watching = &cl.applicable_config.unwrap().projects[0];
/// assert_eq!(watching.config_group_ids, vec!["h1/main"]);
/// ```
#[derive(Debug, Clone)]
pub struct ClBuilder {
    /// The LUCI project of the CL (its applicable config is resolved for it).
    pub(crate) project: String,
    pub(crate) cl: ChangeList,
    pub(crate) groups: Vec<String>,
    pub(crate) group_ids: Option<Vec<String>>,
    pub(crate) watching: Watching,
    /// The entity is built without a snapshot.
    pub(crate) no_snapshot: bool,
}

impl ClBuilder {
    /// The first version of CL `clid` of the LUCI project `luci_project`,
    /// with the defaults above.
    pub fn new(luci_project: &str, clid: i64) -> ClBuilder {
        ClBuilder::first(luci_project, clid)
    }

    /// The CL entity built, its applicable config resolved against `config`
    /// as in a scenario: watched by the CL's LUCI project in the explicit
    /// groups (see [`ClBuilder::group`]) or else in the groups whose watches
    /// match; without `config`, watched in no group.
    pub fn build(&self, config: Option<&ProjectConfig>) -> ChangeList {
        self.entity(&self.project, config)
    }

    /// The CL id.
    pub fn clid(&self) -> i64 {
        self.cl.clid
    }

    /// The CL entity, its applicable config resolved for `project` against
    /// its latest config (as CV's CL updater does).
    pub(crate) fn entity(&self, project: &str, config: Option<&ProjectConfig>) -> ChangeList {
        let mut cl = self.cl.clone();
        let group_ids = || -> Vec<String> {
            if let Some(ids) = &self.group_ids {
                return ids.clone();
            }
            let Some(config) = config else {
                return Vec::new();
            };
            if !self.groups.is_empty() {
                return self
                    .groups
                    .iter()
                    .map(|name| domain::config::config_group_id(&config.hash, name))
                    .collect();
            }
            let mut ignored = Vec::new();
            let gerrit = cl
                .snapshot
                .as_ref()
                .and_then(|s| s.gerrit.clone())
                .unwrap_or_default();
            Matcher::new(config, &mut ignored)
                .match_groups(&gerrit.host, &gerrit.project, &gerrit.r#ref, &mut ignored)
                .into_iter()
                .filter_map(|i| config.config_groups.get(usize::try_from(i).ok()?))
                .map(|g| domain::config::config_group_id(&config.hash, &g.name))
                .collect()
        };
        cl.applicable_config = match &self.watching {
            Watching::Unknown => None,
            Watching::ThisProject => {
                let ids = group_ids();
                Some(if ids.is_empty() {
                    // Watched by no group of this project: watched by nobody.
                    ApplicableConfig { projects: vec![] }
                } else {
                    ClBuilder::applicable(project, ids)
                })
            }
            Watching::Groups(projects) => Some(ApplicableConfig {
                projects: projects
                    .iter()
                    .map(|(name, ids)| ApplicableProject {
                        name: name.clone(),
                        config_group_ids: ids.clone(),
                    })
                    .collect(),
            }),
            Watching::Projects(projects) => Some(ApplicableConfig {
                projects: projects
                    .iter()
                    .map(|name| ApplicableProject {
                        name: name.clone(),
                        config_group_ids: if name == project {
                            group_ids()
                        } else {
                            Vec::new()
                        },
                    })
                    .collect(),
            }),
        };
        if self.no_snapshot {
            cl.snapshot = None;
        }
        cl
    }

    /// The first version of a CL.
    pub(crate) fn first(project: &str, clid: i64) -> ClBuilder {
        let mut b = ClBuilder {
            project: project.to_string(),
            cl: ChangeList {
                clid,
                eversion: 1,
                snapshot: Some(Snapshot {
                    luci_project: project.to_string(),
                    gerrit: Some(GerritChange {
                        host: HOST.to_string(),
                        change: clid,
                        project: "repo/a".to_string(),
                        r#ref: "refs/heads/main".to_string(),
                        status: ChangeStatus::New as i32,
                        current_revision_created: Some(t(-60)),
                        ..GerritChange::default()
                    }),
                    ..Snapshot::default()
                }),
                ..ChangeList::default()
            },
            groups: Vec::new(),
            group_ids: None,
            watching: Watching::ThisProject,
            no_snapshot: false,
        };
        b = b.owner("user-1@example.com").patchset(1);
        b
    }

    /// The next version of a CL, from its previous one.
    pub(crate) fn next(previous: &ClBuilder) -> ClBuilder {
        let mut b = previous.clone();
        b.cl.eversion += 1;
        b.snapshot().outdated = false;
        b
    }

    fn snapshot(&mut self) -> &mut Snapshot {
        self.cl.snapshot.get_or_insert_with(Snapshot::default)
    }

    fn gerrit(&mut self) -> &mut GerritChange {
        self.snapshot()
            .gerrit
            .get_or_insert_with(GerritChange::default)
    }

    /// Sets the current patchset (and the revision name `rev-<clid:06>-<ps:03>`).
    pub fn patchset(mut self, patchset: i32) -> Self {
        let clid = self.cl.clid;
        let snapshot = self.snapshot();
        snapshot.patchset = patchset;
        snapshot.min_equivalent_patchset = patchset;
        self.gerrit().current_revision = format!("rev-{clid:06}-{patchset:03}");
        self
    }

    /// Sets the current revision's name (after [`ClBuilder::patchset`], which
    /// names it `rev-<clid:06>-<ps:03>`).
    pub fn revision(mut self, revision: &str) -> Self {
        self.gerrit().current_revision = revision.to_string();
        self
    }

    /// Sets the Gerrit change number (default: the CL id).
    pub fn change(mut self, change: i64) -> Self {
        self.gerrit().change = change;
        self
    }

    /// Sets when the current revision was uploaded (default `T0-1h`).
    pub fn uploaded(mut self, at: Timestamp) -> Self {
        self.gerrit().current_revision_created = Some(at);
        self
    }

    /// Sets the owner's email ("" = an owner without email) and account id.
    pub fn owner(mut self, email: &str) -> Self {
        let gerrit = self.gerrit();
        gerrit.owner_email = email.to_string();
        gerrit.owner_account_id = if email.is_empty() {
            1
        } else {
            account_id(email)
        };
        self
    }

    /// Sets the owner's Gerrit account id (after [`ClBuilder::owner`], which
    /// derives one from the email).
    pub fn owner_account_id(mut self, account_id: i64) -> Self {
        self.gerrit().owner_account_id = account_id;
        self
    }

    /// Sets the LUCI project the snapshot was fetched for (default: the CL's
    /// project), e.g. a snapshot of another project; the applicable config
    /// is still resolved for the CL's project.
    pub fn snapshot_project(mut self, luci_project: &str) -> Self {
        self.snapshot().luci_project = luci_project.to_string();
        self
    }

    /// Builds the entity without a snapshot, as for a CL that CV knows only
    /// by id (e.g. a dep the project cannot see); the other settings stay.
    pub fn no_snapshot(mut self) -> Self {
        self.no_snapshot = true;
        self
    }

    /// Sets the Gerrit host.
    pub fn host(mut self, host: &str) -> Self {
        self.gerrit().host = host.to_string();
        self
    }

    /// Sets the Gerrit repo.
    pub fn repo(mut self, repo: &str) -> Self {
        self.gerrit().project = repo.to_string();
        self
    }

    /// Sets the target ref.
    pub fn git_ref(mut self, git_ref: &str) -> Self {
        self.gerrit().r#ref = git_ref.to_string();
        self
    }

    /// Adds a config group of the latest config to the CL's applicable config
    /// (without any, the groups are those the config's watches match).
    pub fn group(mut self, name: &str) -> Self {
        self.groups.push(name.to_string());
        self
    }

    /// Forgets the explicit config groups added with [`ClBuilder::group`]
    /// (e.g. to move the CL to another group in its next version).
    pub fn no_groups(mut self) -> Self {
        self.groups.clear();
        self
    }

    /// Sets the full config group ids (`"<hash>/<name>"`) of the CL's
    /// applicable config as given, e.g. ids of an older config, whose hash
    /// makes the PM match the CL against the pinned config instead.
    pub fn group_ids(mut self, ids: &[&str]) -> Self {
        self.group_ids = Some(ids.iter().map(|id| id.to_string()).collect());
        self
    }

    /// Adds a vote on `label` by `email` at `at`.
    pub fn vote(self, label: &str, value: i32, email: &str, at: Timestamp) -> Self {
        self.vote_with_account(label, value, email, account_id(email), at)
    }

    /// Adds a vote on `label` by `email` with Gerrit account `account_id` at `at`.
    pub fn vote_with_account(
        mut self,
        label: &str,
        value: i32,
        email: &str,
        account_id: i64,
        at: Timestamp,
    ) -> Self {
        self.gerrit().votes.push(Vote {
            label: label.to_string(),
            value,
            email: email.to_string(),
            account_id,
            time: Some(at),
        });
        self
    }

    /// Adds a `Commit-Queue` vote (1: dry run, 2: full run).
    pub fn cq_vote(self, value: i32, email: &str, at: Timestamp) -> Self {
        self.vote("Commit-Queue", value, email, at)
    }

    /// Adds an `Auto-Submit` +1 vote.
    pub fn auto_submit(self, email: &str, at: Timestamp) -> Self {
        self.vote("Auto-Submit", 1, email, at)
    }

    /// Removes every vote (as a purge or a vote removal does).
    pub fn no_votes(mut self) -> Self {
        self.gerrit().votes.clear();
        self
    }

    /// Appends HARD deps (git parents), in order.
    pub fn deps_hard(self, clids: &[i64]) -> Self {
        self.deps(clids, DepKind::Hard)
    }

    /// Appends SOFT deps (`Cq-Depend:` footers), in order.
    pub fn deps_soft(self, clids: &[i64]) -> Self {
        self.deps(clids, DepKind::Soft)
    }

    fn deps(mut self, clids: &[i64], kind: DepKind) -> Self {
        self.snapshot().deps.extend(clids.iter().map(|&clid| Dep {
            clid,
            kind: kind as i32,
        }));
        self
    }

    /// Adds a footer to the snapshot metadata (e.g. `Commit: false`).
    pub fn footer(mut self, key: &str, value: &str) -> Self {
        self.snapshot().metadata.push(Footer {
            key: key.to_string(),
            value: value.to_string(),
        });
        self
    }

    /// Adds a snapshot ingestion error (e.g. `corrupt_gerrit_metadata`).
    pub fn snapshot_error(mut self, kind: crate::proto::cl_error::Kind) -> Self {
        self.snapshot().errors.push(ClError { kind: Some(kind) });
        self
    }

    /// Marks the change merged.
    pub fn status_merged(mut self) -> Self {
        self.gerrit().status = ChangeStatus::Merged as i32;
        self
    }

    /// Marks the change abandoned.
    pub fn status_abandoned(mut self) -> Self {
        self.gerrit().status = ChangeStatus::Abandoned as i32;
        self
    }

    /// Marks the change open (NEW) again.
    pub fn status_new(mut self) -> Self {
        self.gerrit().status = ChangeStatus::New as i32;
        self
    }

    /// Marks the change submittable.
    pub fn submittable(mut self) -> Self {
        self.snapshot().submittable = true;
        self
    }

    /// Marks the snapshot outdated (a CV mutation happened since it was taken).
    pub fn outdated(mut self) -> Self {
        self.snapshot().outdated = true;
        self
    }

    /// Leaves the CL without applicable config: the PM's access is unknown.
    pub fn access_unknown(mut self) -> Self {
        self.watching = Watching::Unknown;
        self
    }

    /// Makes the CL watched by the scenario's project again (the default).
    pub fn watched(mut self) -> Self {
        self.watching = Watching::ThisProject;
        self
    }

    /// Makes the CL watched by exactly these projects (`&[]`: by none).
    pub fn watched_by_projects(mut self, projects: &[&str]) -> Self {
        self.watching = Watching::Projects(projects.iter().map(|p| p.to_string()).collect());
        self
    }

    /// Makes the CL watched by exactly these projects, each in these config
    /// groups given by full id (`"<hash>/<name>"`), whatever the config.
    pub fn watched_by_groups(mut self, projects: &[(&str, &[&str])]) -> Self {
        self.watching = Watching::Groups(
            projects
                .iter()
                .map(|(name, ids)| {
                    (
                        name.to_string(),
                        ids.iter().map(|id| id.to_string()).collect(),
                    )
                })
                .collect(),
        );
        self
    }

    /// Records that the project has no access to the CL (since `at`; until
    /// then access is only "probably" denied).
    pub fn no_access(mut self, project: &str, at: Timestamp) -> Self {
        self.cl
            .access
            .get_or_insert_with(Default::default)
            .no_access
            .push(NoAccess {
                project: project.to_string(),
                no_access_time: Some(at),
            });
        self
    }

    /// Marks the CL entity deleted.
    pub fn deleted(mut self) -> Self {
        self.cl.deleted = true;
        self
    }

    /// Sets the entity version explicitly.
    pub fn eversion(mut self, eversion: i64) -> Self {
        self.cl.eversion = eversion;
        self
    }

    /// Sets the last patchset a NEW_PATCHSET_RUN ran on.
    pub fn new_patchset_run_after(mut self, patchset: i32) -> Self {
        self.cl.trigger_new_patchset_run_after_ps = patchset;
        self
    }

    /// The applicable config for `project` with these group ids.
    pub(crate) fn applicable(project: &str, group_ids: Vec<String>) -> ApplicableConfig {
        ApplicableConfig {
            projects: vec![ApplicableProject {
                name: project.to_string(),
                config_group_ids: group_ids,
            }],
        }
    }
}
