//! The official azure-eventhub Python SDK as a test peer.
