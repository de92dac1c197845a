//! sv-dist on a machine without GPUs: the heartbeats over a real TCPStore (in one
//! process and between two), the rendezvous, NCCL's clean refusal, and the training
//! semantics through the Collective trait with the thread test double.

mod semantics;
mod store;
