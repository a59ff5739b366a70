//! Password hashing, once for the whole system: argon2id with one parameter set
//! ([`params`]), in PHC string form. The server hashes users' passwords with it; the
//! device keeps a verifier of the same kind for offline logins. The caller supplies
//! the salt's random bytes (this crate does no IO).

use argon2::password_hash::{self, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// One unit of argon2 memory (1 KiB): what [`verify_in`] computes in.
pub use argon2::Block;

/// The one parameter set: argon2id v0x13, 19 MiB, two passes, one lane (the argon2
/// crate's defaults, which follow OWASP's recommendation), written out so a change of
/// the crate's defaults cannot change ours silently.
pub fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters")
}

/// The argon2id PHC string of `password` with `salt` (16 random bytes), computed in
/// memory given back at the end ([`returned_blocks`]).
pub fn hash(password: &str, salt: &[u8; 16]) -> String {
    let salt_text = SaltString::encode_b64(salt).expect("16 bytes make a valid salt");
    let params = params();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut blocks = returned_blocks();
    blocks.resize(params.block_count(), Block::default());
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        argon2
            .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut blocks[..])
            .map_err(|_| password_hash::Error::Crypto)
    })
    .expect("argon2 with valid parameters");
    PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).expect("the parameters have a PHC form"),
        salt: Some(salt_text.as_salt()),
        hash: Some(output),
    }
    .to_string()
}

/// Whether `password` matches the PHC string `hash` (with the parameters the string
/// names), computing in `blocks`: grown once to what the parameters need and reused,
/// so a thread checking many passwords allocates its memory once.
pub fn verify_in(password: &str, hash: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm), Some(expected), Some(salt)) = (
        Params::try_from(&parsed),
        Algorithm::try_from(parsed.algorithm),
        parsed.hash,
        parsed.salt,
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let n = params.block_count();
    if blocks.len() < n {
        blocks.resize(n, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..n])
        .is_ok()
        && out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// [`verify_in`] with blocks of its own, given back to the system at the end
/// ([`returned_blocks`]).
pub fn verify(password: &str, hash: &str) -> bool {
    verify_in(password, hash, &mut returned_blocks())
}

/// Room for [`verify_in`]'s blocks that the allocator gives back to the system when it
/// is dropped: 33 MiB reserved, of which only what the parameters need (19 MiB) is
/// ever written, so only that becomes resident. glibc serves a request that large by
/// a mapping of its own and unmaps it on free; a 19 MiB request is served that way
/// the first time too, but its free raises glibc's mapping threshold to 19 MiB, after
/// which each thread's 19 MiB (and every buffer under it) comes from the heap and stays
/// with the process. Past 32 MiB the threshold is never raised.
pub fn returned_blocks() -> Vec<Block> {
    const RESERVED: usize = 33 * 1024 * 1024 / std::mem::size_of::<Block>();
    Vec::with_capacity(RESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("s3cret", &[7; 16]);
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("s3cret", &h));
        assert!(!verify("s3cret ", &h));
        assert!(!verify("s3cret", "not a hash"));
        // Reused blocks give the same answers.
        let mut blocks = returned_blocks();
        assert!(verify_in("s3cret", &h, &mut blocks));
        assert!(!verify_in("other", &h, &mut blocks));
        assert_eq!(blocks.len(), params().block_count());
        // Written within the room reserved (past glibc's highest mapping threshold).
        assert!(blocks.capacity() * std::mem::size_of::<Block>() > 32 * 1024 * 1024);
    }

    #[test]
    fn a_hash_is_the_one_argon2_itself_makes() {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(&[9; 16]).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
            .hash_password(b"field crew", &salt)
            .unwrap()
            .to_string();
        assert_eq!(hash("field crew", &[9; 16]), theirs);
    }

    #[test]
    fn hashes_made_with_other_parameters_still_verify() {
        use argon2::password_hash::PasswordHasher;
        // A hash an earlier version (or another tool) made with other costs.
        let salt = SaltString::encode_b64(&[1; 16]).unwrap();
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(verify("pw", &other));
        assert!(!verify("px", &other));
    }
}
