//! Unit tests of the connection through a fake peer.
