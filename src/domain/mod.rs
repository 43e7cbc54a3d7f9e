//! The pure fold: the Project Manager's state machine and triager.
