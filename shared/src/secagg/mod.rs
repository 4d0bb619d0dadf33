//! Secure aggregation (SecAgg+) as sans-IO state machines.
//!
//! The server, even recording everything it sees, learns the sum of the surviving cohort's inputs and nothing more
//! about any single input, while fewer than the threshold of agents collude with it. This is the protocol of
//! Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning") with the sparse
//! neighbour graph of Bell et al. 2020 (SecAgg+): each agent pairs with `k` neighbours on a random Harary graph and
//! its secrets are Shamir-shared `t` of `k` among them.
//!
//! The six phases, each driven by the network layer with a deadline:
//! 1. **Advertise keys**: every agent makes two fresh X25519 key pairs (one to encrypt shares, one for the pairwise
//!    masks) and a self-mask seed, and signs the public keys with its certificate key ([`KeySigner`]). The server
//!    relays to each agent its neighbours' advertisements (O(k), not the cohort's); peers check the signatures ([`PeerVerifier`]), so a relaying server cannot
//!    substitute keys.
//! 2. **Share keys**: every agent Shamir-shares its self-mask seed and its mask secret key among its neighbours,
//!    each share encrypted end to end (ChaCha20-Poly1305 from ring, key from HKDF over the pairwise agreement of the
//!    encryption keys, bound to round, sender and recipient) and relayed by the server.
//!    **Receipts**: every agent opens the shares relayed to it at once and tells the server whose did not decrypt
//!    or lay outside the field ([`messages::ShareReceipt`]). The server keeps in the round only agents of which at
//!    least `t` receipting neighbours hold a usable share, and tells each agent which of its neighbours to mask
//!    with ([`messages::MaskWith`]). An agent that sent garbage is thus left out before anyone masks with it, and
//!    the round goes on without it, instead of aborting when its secrets cannot be rebuilt.
//! 3. **Masked input**: every agent quantizes `[w, w·Δ]` ([`quant`]) and adds pairwise masks (ChaCha20 keystreams
//!    from the pairwise agreement, added by one side and subtracted by the other) and its self mask, modulo 2^32,
//!    and sends each delta coordinate's low `word_bits` bits ([`words`]; the width is a signed round parameter,
//!    chosen by [`SecAggParams::narrow`]). The server folds the masked vectors into one running sum as they arrive
//!    and reduces the unmasked delta modulo `2^word_bits`.
//! 4. **Consistency** ([`consistency`]): the server sends the survivor set; every survivor signs it with its
//!    certificate key (one set per round); the server relays each agent's neighbours' signatures.
//! 5. **Unmask**: a survivor that holds valid signatures from at least `t` of its own neighbours on the very set it
//!    signed reveals, for each neighbour, the share of its self-mask seed if it survived or of its mask secret key if
//!    it dropped, never both. The server removes the survivors' self masks and the dropped agents' pairwise masks
//!    from the sum, checks that the sum is one the survivors could have produced ([`bounds`]: the mean inside the
//!    clipping box and the `clip_norm` ball, the weight total in range), and outputs only the sum.
//!
//! Threat model: an honest-but-curious or actively malicious server that relays messages faithfully or not and may
//! tell different agents different survivor sets (the consistency round catches that), plus fewer than `t`
//! colluding agents among any agent's neighbours. Not covered: a server that makes up the whole cohort out of Sybil
//! agents (the cohort comes from the server; certificates from the federation CA limit this), denial of service
//! (the server can always abort a round), and malformed-but-well-signed inputs from agents (robust aggregation is
//! not secure aggregation). The README's threat model lists, attack by attack, what is enforced.
//!
//! Nothing in this module opens a socket, reads a clock or uses global randomness: randomness comes in as an
//! argument. Nothing here panics on a message from the network: every message is validated (round, sender,
//! recipient, sizes) and a bad one is a [`SecAggError`].

pub mod bounds;
pub mod client;
pub mod consistency;
pub mod ecdsa;
mod envelope;
pub mod error;
pub mod floor;
pub mod graph;
pub mod kdf;
pub mod messages;
pub mod params;
pub mod prg;
pub mod quant;
pub mod server;
pub mod shamir;
pub mod stream;
pub mod words;

pub use client::ClientSession;
pub use consistency::{SurvivorSet, SurvivorSignature};
pub use ecdsa::{EcdsaP256Signer, PeerKeyTable};
pub use error::SecAggError;
pub use floor::RoundFloor;
pub use graph::NeighbourGraph;
pub use messages::{
    AdvertiseKeys, AgentRef, EncryptedShare, MaskWith, RevealedShare, ShareReceipt, UnmaskRequest, UnmaskResponse,
};
pub use params::SecAggParams;
pub use quant::QuantizedInput;
pub use server::{AggregateSum, QuantizedSum, ServerSession};
pub use stream::{DEFAULT_CHUNK_VALUES, MaskedStream, WireChunks};

/// Signs an agent's advertised public keys with its certificate key (the network layer implements this with the
/// agent's ECDSA P-256 key; see [`EcdsaP256Signer`]).
pub trait KeySigner {
    /// Signs `msg`.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SecAggError>;
}

/// Checks a peer's signature over its advertised keys (the network layer implements this with the peer's
/// CA-verified certificate; see [`PeerKeyTable`]).
pub trait PeerVerifier {
    /// True when `sig` is `peer`'s valid signature over `msg`.
    fn verify(&self, peer: &AgentRef, msg: &[u8], sig: &[u8]) -> bool;
}

/// A cryptographically secure random number generator passed into the state machines.
pub trait SecureRng: rand::RngCore + rand::CryptoRng {}
impl<T: rand::RngCore + rand::CryptoRng> SecureRng for T {}
