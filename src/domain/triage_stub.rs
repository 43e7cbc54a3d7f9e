//! A trivial triager used until the real one (`domain::triager`) is wired in:
//! it acknowledges a component that required triage and decides nothing.

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
