//! What an agent reports to whoever runs it (the demo, the tests, the CLI's progress output): connection changes,
//! models received, rounds trained, refused and ended, and the traffic they took.
//!
//! Reports only: nothing here changes what the agent does, and nothing the agent does depends on whether anyone
//! listens.

/// Something the agent reports to whoever runs it (the demo, tests, the CLI's progress output).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// Joined the federation at this server (one of `ClientSettings::servers`).
    Connected {
        server: std::net::SocketAddr,
    },
    Disconnected {
        reason: String,
    },
    Refused {
        reason: String,
    },
    /// The server refused one of this agent's messages (the connection stays open).
    MessageRefused {
        reason: String,
    },
    ModelReceived {
        version: u64,
    },
    Trained {
        round: u64,
        examples: u64,
        /// Of `examples`, the device's own labelled examples.
        device_examples: u64,
        train_loss: f32,
        holdout_accuracy: Option<f32>,
    },
    RoundEnded {
        round: u64,
        completed: bool,
    },
    /// UDP bytes this connection has sent and received so far (reported at each round's end), and what the sent
    /// bytes are made of: packets, ACK frames, bytes declared lost (and so sent again).
    Traffic {
        sent: u64,
        received: u64,
        sent_packets: u64,
        sent_acks: u64,
        lost_bytes: u64,
    },
    /// This agent refused to take part in a secure round (a peer key failed its certificate or signature check, the
    /// server's request was inconsistent, too few neighbours were left...). It told the server and uploads nothing.
    SecureRoundRefused {
        round: u64,
        reason: String,
    },
    /// This agent refused a round's plan: it already trained for that round id (a server that lost track of its
    /// round ids), could not note that it trains for it, the plan has no secure aggregation and this agent
    /// requires it, or the plan's trainable patterns match no weight of its model. It told the server and trains
    /// nothing.
    PlanRefused {
        round: u64,
        reason: String,
    },
    /// The masked vector of a secure round is uploaded.
    MaskedUploaded {
        round: u64,
        values: usize,
    },
}
