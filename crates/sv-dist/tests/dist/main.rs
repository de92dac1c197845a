//! sv-dist on a machine without GPUs: the heartbeats over a real TCPStore (in one
//! process and between two), the rendezvous and NCCL's clean refusal. The multi-rank
//! training tests, over the thread test double of the Collective trait, live with the
//! trainer (crates/sv-train/tests/dist).

mod store;
