//! `NatsBus`: the NATS JetStream backend (in progress).
