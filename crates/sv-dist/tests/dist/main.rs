//! sv-dist on a machine without GPUs: the averaging arithmetic against one rank, the heartbeats over a real TCPStore (in one
//! process and between two), the rendezvous, NCCL's clean refusal, and data-parallel
//! training through sv-train's `Trainer` with the thread test double of the
//! Collective trait.

mod semantics;
mod store;
mod trainer;
