//! The state names the SQL of this module spells, in one place. They are
//! literals in the statements (so the planner can match the partial indexes
//! written with them); the tests prove each equals the API enum's names.

/// Jobs that still work on their instance (one per instance at a time).
pub const JOB_UNFINISHED: &str = "('queued', 'running', 'unwinding')";
/// Jobs a worker holds under a lease.
pub const JOB_LEASED: &str = "('running', 'unwinding')";
/// Jobs that ended.
pub const JOB_FINISHED: &str = "('succeeded', 'failed')";
pub const JOB_QUEUED: &str = "'queued'";
pub const JOB_RUNNING: &str = "'running'";

/// Instances whose state their node's reports may settle.
pub const INSTANCE_SETTLED: &str = "('running', 'stopped', 'unknown', 'failed')";
/// Instances that run or are stopped (what a lost server turns `unknown`).
pub const INSTANCE_UP_OR_DOWN: &str = "('running', 'stopped')";
pub const INSTANCE_DELETED: &str = "'deleted'";
pub const INSTANCE_PROVISIONING: &str = "'provisioning'";
pub const INSTANCE_UNKNOWN: &str = "'unknown'";
pub const INSTANCE_FAILED: &str = "'failed'";

#[cfg(test)]
mod tests {
    use nereid_api::InstanceState as I;
    use nereid_api::JobState as J;

    fn list(names: &[&str]) -> String {
        let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        format!("({})", quoted.join(", "))
    }

    #[test]
    fn the_sql_state_lists_are_the_enums_names() {
        let jobs = |s: &[J]| list(&s.iter().map(|j| j.as_str()).collect::<Vec<_>>());
        let insts = |s: &[I]| list(&s.iter().map(|i| i.as_str()).collect::<Vec<_>>());
        assert_eq!(super::JOB_UNFINISHED, jobs(J::UNFINISHED));
        assert_eq!(super::JOB_LEASED, jobs(&[J::Running, J::Unwinding]));
        assert_eq!(super::JOB_FINISHED, jobs(&[J::Succeeded, J::Failed]));
        assert_eq!(super::JOB_QUEUED, format!("'{}'", J::Queued));
        assert_eq!(super::JOB_RUNNING, format!("'{}'", J::Running));
        assert_eq!(
            super::INSTANCE_SETTLED,
            insts(&[I::Running, I::Stopped, I::Unknown, I::Failed])
        );
        assert_eq!(super::INSTANCE_UP_OR_DOWN, insts(&[I::Running, I::Stopped]));
        assert_eq!(super::INSTANCE_DELETED, format!("'{}'", I::Deleted));
        assert_eq!(
            super::INSTANCE_PROVISIONING,
            format!("'{}'", I::Provisioning)
        );
        assert_eq!(super::INSTANCE_UNKNOWN, format!("'{}'", I::Unknown));
        assert_eq!(super::INSTANCE_FAILED, format!("'{}'", I::Failed));
    }
}
