//! The ZMTP CURVE security mechanism (RFC 25, with the CurveZMQ handshake of RFC 26), as libzmq
//! implements it (htex patch).
//!
//! This module is sans-I/O: the handshake types turn the peer's command bodies into ours, and
//! the session types seal and open MESSAGE frames; `util.rs` moves them over the connection.
//! Every box is NaCl's `crypto_box` (`crypto_box::SalsaBox`: X25519, XSalsa20-Poly1305) and the
//! cookie is a `crypto_secretbox`; no primitive is written here.
//!
//! Where RFC 26 contradicts itself this follows libzmq (`curve_client.cpp`, `curve_server.cpp`,
//! `curve_mechanism_base.cpp`): HELLO carries 72 bytes of zero padding; a server that refuses a
//! client key answers ERROR before closing; one nonce counter per side runs from the handshake
//! through every MESSAGE (HELLO = 1, INITIATE = 2 on the client; READY = 1 on the server); a
//! MESSAGE travels in a data frame; a peer nonce that does not increase closes the connection.

use bytes::{BufMut, Bytes, BytesMut};
use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::{AeadInPlace, OsRng};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use crypto_secretbox::{KeyInit, XSalsa20Poly1305};
use zeroize::Zeroizing;

use std::fmt;

const KEY: usize = 32;
const TAG: usize = 16;

const HELLO_SIZE: usize = 200;
const WELCOME_SIZE: usize = 168;
const COOKIE_SIZE: usize = 96;
const VOUCH_SIZE: usize = 96;
/// INITIATE without metadata: name, cookie, short nonce, box of C + vouch.
const INITIATE_MIN_SIZE: usize = 9 + COOKIE_SIZE + 8 + TAG + KEY + VOUCH_SIZE;
/// READY without metadata: name, short nonce, tag.
const READY_MIN_SIZE: usize = 6 + 8 + TAG;
/// What sealing adds to a frame of data: "\x07MESSAGE", the short nonce, the tag, the flags.
pub const MESSAGE_OVERHEAD: usize = 8 + 8 + TAG + 1;

const MORE: u8 = 0x01;
const COMMAND: u8 = 0x02;

/// Errors of CURVE keys read from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CurveKeyError {
    #[error("a CURVE key is 40 characters of Z85, not {0}")]
    Length(usize),
    #[error("a CURVE key holds characters outside the Z85 alphabet")]
    Alphabet,
}

/// Why a CURVE handshake or message failed. Messages never include key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CurveError {
    #[error("the peer's {command} is {got} bytes, not {expected}")]
    Size {
        command: &'static str,
        got: usize,
        expected: &'static str,
    },
    #[error("expected the peer's {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("the peer's HELLO asks for CURVE version {0}.{1}, not 1.0")]
    Version(u8, u8),
    #[error("the peer's HELLO padding is not zero")]
    Padding,
    #[error("the {0} box does not open: a wrong key or altered bytes")]
    Open(&'static str),
    #[error("the cookie in INITIATE is not the one this server sent")]
    Cookie,
    #[error("the vouch in INITIATE does not name this connection and this server")]
    Vouch,
    #[error("the client key {0} is not on this port's allow-list")]
    NotAllowed(String),
    #[error("the server refused the handshake: {0}")]
    Refused(String),
    #[error("the peer's nonce {got} does not follow {last}: a replayed or reordered frame")]
    Sequence { got: u64, last: u64 },
    #[error("the peer sent a command inside a MESSAGE, which this socket does not take")]
    InnerCommand,
    #[error("malformed metadata in the peer's {0}")]
    Metadata(&'static str),
    #[error("this connection has used every nonce")]
    NoncesExhausted,
}

/// A CURVE long-term public key (32 bytes; 40 characters of Z85 in text).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CurvePublicKey([u8; KEY]);

impl CurvePublicKey {
    pub fn from_bytes(bytes: [u8; KEY]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY] {
        &self.0
    }

    pub fn from_z85(text: &str) -> Result<Self, CurveKeyError> {
        Ok(Self(*decode_z85_key(text)?))
    }

    pub fn to_z85(&self) -> String {
        z85::encode(self.0)
    }

    /// The first 8 characters of the key's Z85: enough to tell keys apart in logs.
    pub fn fingerprint(&self) -> String {
        self.to_z85()[..8].to_string()
    }

    fn to_box_key(self) -> PublicKey {
        PublicKey::from_bytes(self.0)
    }
}

impl fmt::Display for CurvePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl fmt::Debug for CurvePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CurvePublicKey({})", self.to_z85())
    }
}

/// A CURVE long-term secret key. Zeroed when dropped; `Debug` does not show it.
#[derive(Clone)]
pub struct CurveSecretKey(SecretKey);

impl CurveSecretKey {
    pub fn generate() -> Self {
        Self(SecretKey::generate(&mut OsRng))
    }

    pub fn from_bytes(bytes: [u8; KEY]) -> Self {
        Self(SecretKey::from_bytes(bytes))
    }

    pub fn from_z85(text: &str) -> Result<Self, CurveKeyError> {
        Ok(Self(SecretKey::from_bytes(*decode_z85_key(text)?)))
    }

    /// The key's Z85 text, zeroed when dropped.
    pub fn to_z85(&self) -> Zeroizing<String> {
        Zeroizing::new(z85::encode(Zeroizing::new(self.0.to_bytes())))
    }

    pub fn public_key(&self) -> CurvePublicKey {
        CurvePublicKey(self.0.public_key().to_bytes())
    }
}

impl fmt::Debug for CurveSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurveSecretKey([REDACTED])")
    }
}

fn decode_z85_key(text: &str) -> Result<Zeroizing<[u8; KEY]>, CurveKeyError> {
    if text.len() != 40 {
        return Err(CurveKeyError::Length(text.len()));
    }
    let bytes = Zeroizing::new(z85::decode(text).map_err(|_| CurveKeyError::Alphabet)?);
    let mut key = Zeroizing::new([0u8; KEY]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn short_nonce(prefix: &[u8; 16], counter: u64) -> crypto_box::Nonce {
    let mut nonce = crypto_box::Nonce::default();
    nonce[..16].copy_from_slice(prefix);
    nonce[16..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

fn long_nonce(prefix: &[u8; 8], random: &[u8]) -> crypto_box::Nonce {
    let mut nonce = crypto_box::Nonce::default();
    nonce[..8].copy_from_slice(prefix);
    nonce[8..].copy_from_slice(random);
    nonce
}

fn random_16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// `plaintext` boxed as NaCl does it: the tag, then the ciphertext.
fn seal(cbox: &SalsaBox, nonce: &crypto_box::Nonce, plaintext: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; TAG + plaintext.len()];
    out[TAG..].copy_from_slice(plaintext);
    let tag = cbox
        .encrypt_in_place_detached(nonce, b"", &mut out[TAG..])
        .expect("a box without associated data always seals");
    out[..TAG].copy_from_slice(&tag);
    out
}

/// Opens a NaCl box (tag, then ciphertext); the plaintext is zeroed when dropped.
fn open(
    cbox: &SalsaBox,
    nonce: &crypto_box::Nonce,
    boxed: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, CurveError> {
    if boxed.len() < TAG {
        return Err(CurveError::Open(what));
    }
    let tag = crypto_box::aead::generic_array::GenericArray::clone_from_slice(&boxed[..TAG]);
    let mut plain = Zeroizing::new(boxed[TAG..].to_vec());
    cbox.decrypt_in_place_detached(nonce, b"", &mut plain, &tag)
        .map_err(|_| CurveError::Open(what))?;
    Ok(plain)
}

/// The command name a command body starts with (its length byte, then the name).
fn command_name(body: &[u8]) -> &[u8] {
    match body.first() {
        Some(&n) if body.len() > n as usize => &body[1..1 + n as usize],
        _ => b"",
    }
}

fn expect_command(body: &[u8], name: &'static str) -> Result<(), CurveError> {
    let got = command_name(body);
    if got == name.as_bytes() {
        return Ok(());
    }
    if got == b"ERROR" {
        let reason = body
            .get(7..7 + *body.get(6).unwrap_or(&0) as usize)
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .unwrap_or_default();
        return Err(CurveError::Refused(reason));
    }
    Err(CurveError::Unexpected {
        expected: name,
        got: if got.is_empty() {
            "a malformed command".into()
        } else {
            format!("{}", String::from_utf8_lossy(got))
        },
    })
}

fn with_name(name: &str, capacity: usize) -> BytesMut {
    let mut body = BytesMut::with_capacity(1 + name.len() + capacity);
    body.put_u8(name.len() as u8);
    body.put_slice(name.as_bytes());
    body
}

/// An ERROR command body (RFC 26), sent by a server before it closes a refused connection.
pub fn error_command(reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(255)];
    let mut body = with_name("ERROR", 1 + reason.len());
    body.put_u8(reason.len() as u8);
    body.put_slice(reason);
    body.freeze()
}

/// ZMTP metadata (RFC 23 properties): a name of up to 255 bytes, a value of up to 2^31.
pub fn encode_metadata<'a>(properties: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in properties {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Parses ZMTP metadata into (name, value) pairs.
pub fn decode_metadata(
    mut data: &[u8],
    command: &'static str,
) -> Result<Vec<(String, Bytes)>, CurveError> {
    let mut properties = Vec::new();
    while !data.is_empty() {
        let n = data[0] as usize;
        let name = data.get(1..1 + n).ok_or(CurveError::Metadata(command))?;
        let name = std::str::from_utf8(name).map_err(|_| CurveError::Metadata(command))?;
        data = &data[1 + n..];
        let len = data.get(..4).ok_or(CurveError::Metadata(command))?;
        let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
        let value = data.get(4..4 + len).ok_or(CurveError::Metadata(command))?;
        properties.push((name.to_string(), Bytes::copy_from_slice(value)));
        data = &data[4 + len..];
    }
    Ok(properties)
}

/// The client side of a handshake: HELLO, then INITIATE from WELCOME, then the session from
/// READY.
pub struct ClientHandshake {
    server: PublicKey,
    secret: SecretKey,
    transient: SecretKey,
    /// The box of C' and S, for HELLO.
    hello_box: SalsaBox,
    /// S', known from WELCOME.
    server_transient: Option<PublicKey>,
    nonce: u64,
}

impl ClientHandshake {
    pub fn new(server: &CurvePublicKey, secret: &CurveSecretKey) -> Self {
        let server = server.to_box_key();
        let transient = SecretKey::generate(&mut OsRng);
        let hello_box = SalsaBox::new(&server, &transient);
        Self {
            server,
            secret: secret.0.clone(),
            transient,
            hello_box,
            server_transient: None,
            nonce: 1,
        }
    }

    fn next_nonce(&mut self) -> u64 {
        let n = self.nonce;
        self.nonce += 1;
        n
    }

    /// The HELLO command body: version 1.0, 72 zero bytes, C', a short nonce and the box of 64
    /// zero bytes that proves the client holds c'.
    pub fn hello(&mut self) -> Bytes {
        let nonce = self.next_nonce();
        let mut body = with_name("HELLO", HELLO_SIZE);
        body.put_slice(&[1, 0]);
        body.put_slice(&[0u8; 72]);
        body.put_slice(self.transient.public_key().as_bytes());
        body.put_u64(nonce);
        body.put_slice(&seal(
            &self.hello_box,
            &short_nonce(b"CurveZMQHELLO---", nonce),
            &[0u8; 64],
        ));
        debug_assert_eq!(body.len(), HELLO_SIZE);
        body.freeze()
    }

    /// Reads WELCOME and answers INITIATE: the cookie, C and the vouch, with our metadata.
    pub fn initiate(&mut self, welcome: &[u8], metadata: &[u8]) -> Result<Bytes, CurveError> {
        expect_command(welcome, "WELCOME")?;
        if welcome.len() != WELCOME_SIZE {
            return Err(CurveError::Size {
                command: "WELCOME",
                got: welcome.len(),
                expected: "168",
            });
        }
        let plain = open(
            &self.hello_box,
            &long_nonce(b"WELCOME-", &welcome[8..24]),
            &welcome[24..],
            "WELCOME",
        )?;
        let server_transient =
            PublicKey::from_bytes(plain[..KEY].try_into().expect("the box holds 128 bytes"));
        let cookie = &plain[KEY..KEY + COOKIE_SIZE];

        // The vouch: C' and S boxed from C to S', so that S' knows C holds c.
        let vouch_random = random_16();
        let mut vouched = Zeroizing::new([0u8; 2 * KEY]);
        vouched[..KEY].copy_from_slice(self.transient.public_key().as_bytes());
        vouched[KEY..].copy_from_slice(self.server.as_bytes());
        let vouch_box = SalsaBox::new(&server_transient, &self.secret);
        let mut vouch = Vec::with_capacity(VOUCH_SIZE);
        vouch.extend_from_slice(&vouch_random);
        vouch.extend_from_slice(&seal(
            &vouch_box,
            &long_nonce(b"VOUCH---", &vouch_random),
            &vouched[..],
        ));

        let mut inner = Zeroizing::new(Vec::with_capacity(KEY + VOUCH_SIZE + metadata.len()));
        inner.extend_from_slice(self.secret.public_key().as_bytes());
        inner.extend_from_slice(&vouch);
        inner.extend_from_slice(metadata);
        let session = SalsaBox::new(&server_transient, &self.transient);
        let nonce = self.next_nonce();
        let mut body = with_name("INITIATE", COOKIE_SIZE + 8 + TAG + inner.len());
        body.put_slice(cookie);
        body.put_u64(nonce);
        body.put_slice(&seal(
            &session,
            &short_nonce(b"CurveZMQINITIATE", nonce),
            &inner,
        ));
        self.server_transient = Some(server_transient);
        Ok(body.freeze())
    }

    /// Reads READY: the server's metadata, and the session for MESSAGE frames.
    pub fn ready(self, ready: &[u8]) -> Result<(Vec<(String, Bytes)>, CurveSession), CurveError> {
        expect_command(ready, "READY")?;
        if ready.len() < READY_MIN_SIZE {
            return Err(CurveError::Size {
                command: "READY",
                got: ready.len(),
                expected: "at least 30",
            });
        }
        let server_transient = self.server_transient.ok_or(CurveError::Unexpected {
            expected: "WELCOME",
            got: "READY".into(),
        })?;
        let session = SalsaBox::new(&server_transient, &self.transient);
        let peer_nonce = u64::from_be_bytes(ready[6..14].try_into().expect("eight bytes"));
        let plain = open(
            &session,
            &short_nonce(b"CurveZMQREADY---", peer_nonce),
            &ready[14..],
            "READY",
        )?;
        let metadata = decode_metadata(&plain, "READY")?;
        Ok((
            metadata,
            CurveSession::new(
                &server_transient,
                &self.transient,
                Side::Client,
                self.nonce,
                peer_nonce,
            ),
        ))
    }
}

/// The server side of a handshake: WELCOME from HELLO, then the checked client from INITIATE.
pub struct ServerHandshake {
    secret: SecretKey,
    /// This connection's cookie key: it seals C' and s' into the cookie, so that nothing of the
    /// transient pair is kept between WELCOME and INITIATE (RFC 26).
    cookie_key: Zeroizing<[u8; KEY]>,
    client_transient: Option<PublicKey>,
    hello_nonce: u64,
}

/// A client whose INITIATE checked out, before the allow-list is asked.
pub struct AcceptedClient {
    /// The client's long-term public key, proven by the vouch.
    pub client_key: CurvePublicKey,
    pub metadata: Vec<(String, Bytes)>,
    client_transient: PublicKey,
    transient: SecretKey,
    peer_nonce: u64,
}

impl fmt::Debug for AcceptedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AcceptedClient({})", self.client_key.fingerprint())
    }
}

impl ServerHandshake {
    pub fn new(secret: &CurveSecretKey) -> Self {
        let mut cookie_key = Zeroizing::new([0u8; KEY]);
        OsRng.fill_bytes(&mut cookie_key[..]);
        Self {
            secret: secret.0.clone(),
            cookie_key,
            client_transient: None,
            hello_nonce: 0,
        }
    }

    /// Reads HELLO (size, version, padding, signature) and answers WELCOME.
    pub fn welcome(&mut self, hello: &[u8]) -> Result<Bytes, CurveError> {
        expect_command(hello, "HELLO")?;
        if hello.len() != HELLO_SIZE {
            return Err(CurveError::Size {
                command: "HELLO",
                got: hello.len(),
                expected: "200",
            });
        }
        if hello[6..8] != [1, 0] {
            return Err(CurveError::Version(hello[6], hello[7]));
        }
        if hello[8..80].iter().any(|&b| b != 0) {
            return Err(CurveError::Padding);
        }
        let client_transient = PublicKey::from_bytes(hello[80..112].try_into().expect("32 bytes"));
        let nonce = u64::from_be_bytes(hello[112..120].try_into().expect("eight bytes"));
        let hello_box = SalsaBox::new(&client_transient, &self.secret);
        let signature = open(
            &hello_box,
            &short_nonce(b"CurveZMQHELLO---", nonce),
            &hello[120..],
            "HELLO",
        )?;
        if signature.iter().any(|&b| b != 0) {
            return Err(CurveError::Open("HELLO"));
        }

        let transient = SecretKey::generate(&mut OsRng);
        let mut cookie_plain = Zeroizing::new([0u8; 2 * KEY]);
        cookie_plain[..KEY].copy_from_slice(client_transient.as_bytes());
        cookie_plain[KEY..].copy_from_slice(&transient.to_bytes());
        let cookie_random = random_16();
        let cookie_box = XSalsa20Poly1305::new((&*self.cookie_key).into());
        let mut cookie = Vec::with_capacity(COOKIE_SIZE);
        cookie.extend_from_slice(&cookie_random);
        let mut sealed = cookie_plain.to_vec();
        let tag = cookie_box
            .encrypt_in_place_detached(&long_nonce(b"COOKIE--", &cookie_random), b"", &mut sealed)
            .expect("a secretbox without associated data always seals");
        cookie.extend_from_slice(&tag);
        cookie.extend_from_slice(&sealed);

        let mut plain = Zeroizing::new(Vec::with_capacity(KEY + COOKIE_SIZE));
        plain.extend_from_slice(transient.public_key().as_bytes());
        plain.extend_from_slice(&cookie);
        let welcome_random = random_16();
        let mut body = with_name("WELCOME", WELCOME_SIZE);
        body.put_slice(&welcome_random);
        body.put_slice(&seal(
            &hello_box,
            &long_nonce(b"WELCOME-", &welcome_random),
            &plain,
        ));
        debug_assert_eq!(body.len(), WELCOME_SIZE);
        self.client_transient = Some(client_transient);
        self.hello_nonce = nonce;
        Ok(body.freeze())
    }

    /// Reads INITIATE: the cookie must be ours and name HELLO's C', the box must open, and the
    /// vouch must bind C to C' and this server. The allow-list is the caller's to ask.
    pub fn accept(&mut self, initiate: &[u8]) -> Result<AcceptedClient, CurveError> {
        expect_command(initiate, "INITIATE")?;
        if initiate.len() < INITIATE_MIN_SIZE {
            return Err(CurveError::Size {
                command: "INITIATE",
                got: initiate.len(),
                expected: "at least 257",
            });
        }
        let client_transient = self.client_transient.take().ok_or(CurveError::Unexpected {
            expected: "HELLO",
            got: "INITIATE".into(),
        })?;
        let cookie = &initiate[9..9 + COOKIE_SIZE];
        let cookie_box = XSalsa20Poly1305::new((&*self.cookie_key).into());
        let mut cookie_plain = Zeroizing::new(cookie[16 + TAG..].to_vec());
        cookie_box
            .decrypt_in_place_detached(
                &long_nonce(b"COOKIE--", &cookie[..16]),
                b"",
                &mut cookie_plain,
                cookie[16..16 + TAG].into(),
            )
            .map_err(|_| CurveError::Cookie)?;
        if cookie_plain[..KEY] != client_transient.as_bytes()[..] {
            return Err(CurveError::Cookie);
        }
        // The cookie key has served: a replayed INITIATE cannot open another cookie.
        OsRng.fill_bytes(&mut self.cookie_key[..]);
        let transient = SecretKey::from_bytes(cookie_plain[KEY..].try_into().expect("32 bytes"));

        let at = 9 + COOKIE_SIZE;
        let nonce = u64::from_be_bytes(initiate[at..at + 8].try_into().expect("eight bytes"));
        if nonce <= self.hello_nonce {
            return Err(CurveError::Sequence {
                got: nonce,
                last: self.hello_nonce,
            });
        }
        let session = SalsaBox::new(&client_transient, &transient);
        let plain = open(
            &session,
            &short_nonce(b"CurveZMQINITIATE", nonce),
            &initiate[at + 8..],
            "INITIATE",
        )?;
        let client_key = PublicKey::from_bytes(plain[..KEY].try_into().expect("32 bytes"));
        let vouch = &plain[KEY..KEY + VOUCH_SIZE];
        let vouch_box = SalsaBox::new(&client_key, &transient);
        let vouched = open(
            &vouch_box,
            &long_nonce(b"VOUCH---", &vouch[..16]),
            &vouch[16..],
            "vouch",
        )?;
        if vouched[..KEY] != client_transient.as_bytes()[..]
            || vouched[KEY..] != self.secret.public_key().as_bytes()[..]
        {
            return Err(CurveError::Vouch);
        }
        let metadata = decode_metadata(&plain[KEY + VOUCH_SIZE..], "INITIATE")?;
        Ok(AcceptedClient {
            client_key: CurvePublicKey(client_key.to_bytes()),
            metadata,
            client_transient,
            transient,
            peer_nonce: nonce,
        })
    }
}

impl AcceptedClient {
    /// The READY command body with our metadata, and the session for MESSAGE frames.
    pub fn ready(self, metadata: &[u8]) -> (Bytes, CurveSession) {
        let nonce = 1;
        let session = SalsaBox::new(&self.client_transient, &self.transient);
        let mut body = with_name("READY", 8 + TAG + metadata.len());
        body.put_u64(nonce);
        body.put_slice(&seal(
            &session,
            &short_nonce(b"CurveZMQREADY---", nonce),
            metadata,
        ));
        (
            body.freeze(),
            CurveSession::new(
                &self.client_transient,
                &self.transient,
                Side::Server,
                nonce + 1,
                self.peer_nonce,
            ),
        )
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// The two directions of an established CURVE connection.
pub struct CurveSession {
    pub sealer: MessageSealer,
    pub opener: MessageOpener,
}

impl CurveSession {
    /// Both directions share the key of the two transient pairs; each gets its own box (the
    /// box type cannot be cloned).
    fn new(
        peer_transient: &PublicKey,
        transient: &SecretKey,
        side: Side,
        next_nonce: u64,
        peer_nonce: u64,
    ) -> Self {
        let (ours, theirs) = match side {
            Side::Client => (b"CurveZMQMESSAGEC", b"CurveZMQMESSAGES"),
            Side::Server => (b"CurveZMQMESSAGES", b"CurveZMQMESSAGEC"),
        };
        Self {
            sealer: MessageSealer {
                cbox: SalsaBox::new(peer_transient, transient),
                prefix: ours,
                next: next_nonce,
            },
            opener: MessageOpener {
                cbox: SalsaBox::new(peer_transient, transient),
                prefix: theirs,
                last: peer_nonce,
            },
        }
    }
}

/// Seals frames into MESSAGE commands, each with the next nonce.
pub struct MessageSealer {
    cbox: SalsaBox,
    prefix: &'static [u8; 16],
    next: u64,
}

impl MessageSealer {
    /// Writes one frame of `data` as a whole ZMTP frame (header and MESSAGE body) into `dst`.
    /// The frame's MORE flag travels inside the box, as libzmq's does.
    pub fn seal_frame(
        &mut self,
        data: &[u8],
        more: bool,
        dst: &mut BytesMut,
    ) -> Result<(), CurveError> {
        if self.next == u64::MAX {
            return Err(CurveError::NoncesExhausted);
        }
        let nonce = self.next;
        self.next += 1;
        let len = MESSAGE_OVERHEAD + data.len();
        if len > 255 {
            dst.reserve(9 + len);
            dst.put_u8(0x02);
            dst.put_u64(len as u64);
        } else {
            dst.reserve(2 + len);
            dst.put_u8(0x00);
            dst.put_u8(len as u8);
        }
        dst.put_slice(b"\x07MESSAGE");
        dst.put_u64(nonce);
        let tag_at = dst.len();
        dst.put_slice(&[0u8; TAG]);
        let plain_at = dst.len();
        dst.put_u8(if more { MORE } else { 0 });
        dst.put_slice(data);
        let tag = self
            .cbox
            .encrypt_in_place_detached(&short_nonce(self.prefix, nonce), b"", &mut dst[plain_at..])
            .expect("a box without associated data always seals");
        dst[tag_at..plain_at].copy_from_slice(&tag);
        Ok(())
    }
}

/// Opens MESSAGE commands, refusing any nonce that does not increase.
pub struct MessageOpener {
    cbox: SalsaBox,
    prefix: &'static [u8; 16],
    last: u64,
}

impl MessageOpener {
    /// Opens one MESSAGE body into the frame's data and its MORE flag.
    pub fn open_frame(&mut self, mut body: BytesMut) -> Result<(Bytes, bool), CurveError> {
        if body.len() < MESSAGE_OVERHEAD || command_name(&body) != b"MESSAGE" {
            return Err(CurveError::Unexpected {
                expected: "MESSAGE",
                got: if body.len() < MESSAGE_OVERHEAD {
                    format!("a frame of {} bytes", body.len())
                } else {
                    String::from_utf8_lossy(command_name(&body)).into_owned()
                },
            });
        }
        let nonce = u64::from_be_bytes(body[8..16].try_into().expect("eight bytes"));
        if nonce <= self.last {
            return Err(CurveError::Sequence {
                got: nonce,
                last: self.last,
            });
        }
        let tag = crypto_box::aead::generic_array::GenericArray::clone_from_slice(&body[16..32]);
        self.cbox
            .decrypt_in_place_detached(&short_nonce(self.prefix, nonce), b"", &mut body[32..], &tag)
            .map_err(|_| CurveError::Open("MESSAGE"))?;
        self.last = nonce;
        let flags = body[32];
        if flags & COMMAND != 0 {
            return Err(CurveError::InnerCommand);
        }
        let data = body.split_off(33).freeze();
        Ok((data, flags & MORE != 0))
    }
}

// The mechanism's tests are in htex's workspace, `transport/tests/curve_mechanism.rs`, so that
// its one test command runs them.
