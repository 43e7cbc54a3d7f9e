//! A trivial triager for tests of the state machine alone (passed to
//! `domain::evaluate_with`): it acknowledges a component that required
//! triage and decides nothing. The fold's own triager is `domain::triager`.

use super::triage_api::{PmView, TriageError, TriageResult};
use crate::proto::Component;

/// Clears `triage_required` (when set) and requests nothing.
pub fn triage(component: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    let new_value = component.triage_required.then(|| Component {
        triage_required: false,
        ..component.clone()
    });
    Ok(TriageResult {
        new_value,
        ..Default::default()
    })
}
