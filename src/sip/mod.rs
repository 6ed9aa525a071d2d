//! SIP wire format: zero-copy scanning of messages, name-addr and URI parsing, stream framing, and
//! stateless responses.
//!
//! Everything here is sans-io: plain functions over byte slices, no sockets, clocks or runtimes. The
//! scanner borrows from the receive buffer and does not allocate for ordinary messages; it extracts only
//! the headers sipward decides on and keeps every other header as a raw byte range. It does not
//! validate the full RFC 3261 grammar: what it does not need, it does not judge.

pub mod addr;
pub mod framing;
pub mod reply;
pub mod scan;

pub use addr::{parse_name_addr, parse_uri, Aor, NameAddr, Scheme, Uri};
pub use scan::{
    scan, scan_into, Header, HeaderKind, Message, Method, Parties, Party, ScanError, StartLine,
};

/// Linear white space inside a header value: folding leaves CR and LF inside a value's range.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Whether `s` holds linear white space anywhere. White space and the other control bytes are
/// all below `!`, so the bytes are first tested for any such byte, sixteen at a time with SSE2
/// (the last sixteen overlapping the ones before, which does not matter for a yes-or-no answer),
/// eight at a time under sixteen bytes or without SSE2; only a slice that has one is looked at
/// byte by byte. The slices tested (a URI, a Call-ID, a Via's parameters) rarely do. Sixteen
/// bytes a step instead of eight took 42 instructions off an answer in the server
/// (`loadtest/instructions_per_answer.sh`), 13 off the benches' REGISTER.
#[inline]
pub(crate) fn has_lws(s: &[u8]) -> bool {
    let below_bang = |word: &[u8]| {
        bytes_below(
            u64::from_le_bytes(word.try_into().unwrap_or_default()),
            b'!',
        ) != 0
    };
    let suspect = match s.len() {
        0..=7 => true,
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        16.. => {
            let space = safe_arch::set_splat_i8_m128i(b' ' as i8);
            any_lane16(s, |v| at_most(v, space))
        }
        n => s.chunks_exact(8).any(below_bang) || below_bang(&s[n - 8..]),
    };
    suspect && s.iter().any(|&b| is_lws(b))
}

/// Whether `hit` marks a lane in any 16-byte step over `s`, which must be at least 16 bytes long:
/// the last step overlaps the one before (harmless for a yes-or-no answer), and the marks of every
/// step are gathered and tested once at the end. The values tested rarely hold what is looked for,
/// so an early exit would be paid for and not used.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
pub(crate) fn any_lane16(s: &[u8], hit: impl Fn(safe_arch::m128i) -> safe_arch::m128i) -> bool {
    use safe_arch::{bitor_m128i, load_unaligned_m128i, move_mask_i8_m128i};
    let step = |chunk: &[u8]| hit(load_unaligned_m128i(chunk.try_into().unwrap_or(&[0; 16])));
    let mut marks = step(&s[s.len() - 16..]);
    for chunk in s.chunks_exact(16) {
        marks = bitor_m128i(marks, step(chunk));
    }
    move_mask_i8_m128i(marks) != 0
}

/// Lanes of `v` that are at most `limit` (a splat): the smaller of the two is the byte itself.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
pub(crate) fn at_most(v: safe_arch::m128i, limit: safe_arch::m128i) -> safe_arch::m128i {
    safe_arch::cmp_eq_mask_i8_m128i(safe_arch::min_u8_m128i(v, limit), v)
}

/// Where `b` first occurs in `s`, for the searches that usually run across a good part of a
/// value (to the `>` of a URI, past a quoted string); see [`find_either`].
#[inline]
pub(crate) fn find_byte(s: &[u8], b: u8) -> Option<usize> {
    find_either(s, b, b)
}

/// Where `b` first occurs in `s`, for the searches that usually stop within a few bytes (the `:`
/// after a URI scheme, the `<` after a display name): a plain loop, inlined, is cheaper there than
/// the call to [`find_either`] or `memchr`'s run-time dispatch.
#[inline]
pub(crate) fn find_byte_near(s: &[u8], b: u8) -> Option<usize> {
    s.iter().position(|&x| x == b)
}

// Eight bytes at a time: a slice read as a little-endian `u64` keeps byte i in bits 8i..8i+8, so
// the lowest marked byte of a word is the first one in the slice. Each function below marks the
// high bit of the bytes it looks for; bytes after the first match may be marked wrongly (a borrow
// carries into them), the first one never is.
pub(crate) const LOW_BITS: u64 = u64::from_ne_bytes([0x01; 8]);
pub(crate) const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Marks the bytes of `word` that are zero.
#[inline(always)]
pub(crate) fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS
}

/// Marks the bytes of `word` below `n` (at most 0x80).
#[inline(always)]
pub(crate) fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(LOW_BITS * u64::from(n)) & !word & HIGH_BITS
}

/// Marks the bytes of `word` above `n` (below 0x80), exactly: the sum cannot carry out of a byte.
#[inline(always)]
pub(crate) fn bytes_above(word: u64, n: u8) -> u64 {
    (((word & !HIGH_BITS) + LOW_BITS * u64::from(0x7f - n)) | word) & HIGH_BITS
}

/// Index of the byte a mark from the functions above stands for.
#[inline(always)]
pub(crate) fn first_marked(marks: u64) -> usize {
    (marks.trailing_zeros() / 8) as usize
}

/// Where `a` or `b` first occurs in `s`. From 16 bytes on it is an SSE2 search, 16 bytes a step
/// ([`find_either_sse2`]; SSE2 is always there on x86-64, so no run-time dispatch). Shorter
/// slices are tested eight bytes at a time as one `u64` (about ten instructions, against four per
/// byte for a byte-wise loop); only a slice shorter than eight goes byte by byte. The SSE2 step
/// from 16 bytes took 192 instructions off a REGISTER's 10,642; from 24 or 32 bytes, less
/// (`examples/respond_loop.rs`). Out of line: the respond path runs its code once per request,
/// straight through, and every inlined copy of a helper is more code to fetch; that cost more
/// than the calls (the path's code had outgrown the instruction cache).
#[inline(never)]
pub(crate) fn find_either(s: &[u8], a: u8, b: u8) -> Option<usize> {
    let (pa, pb) = (LOW_BITS * u64::from(a), LOW_BITS * u64::from(b));
    let hits = |at: usize| {
        let word = u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
        zero_bytes(word ^ pa) | zero_bytes(word ^ pb)
    };
    let n = s.len();
    if n < 8 {
        return s.iter().position(|&x| x == a || x == b);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if n >= 16 {
        return find_either_sse2(s, a, b);
    }
    let mut at = 0;
    while at + 8 <= n {
        let found = hits(at);
        if found != 0 {
            return Some(at + first_marked(found));
        }
        at += 8;
    }
    // The last eight bytes, overlapping ones already searched: those hold no match, so the first
    // mark is a byte not searched yet.
    let found = if at < n { hits(n - 8) } else { 0 };
    (found != 0).then(|| n - 8 + first_marked(found))
}

/// [`find_either`] from 16 bytes on: sixteen bytes a step, the last step overlapping the one
/// before (whose bytes held no match, so the first mark is a byte not searched yet). memchr's
/// searcher, made for long haystacks, paid a set-up of aligned and unrolled loops that cost more
/// than the search on the few dozen bytes these slices have: 71 instructions to find the `;`
/// 27 bytes into a Via, this about 30 (`examples/respond_loop.rs`).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn find_either_sse2(s: &[u8], a: u8, b: u8) -> Option<usize> {
    use safe_arch::{bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i};
    let (va, vb) = (
        safe_arch::set_splat_i8_m128i(a as i8),
        safe_arch::set_splat_i8_m128i(b as i8),
    );
    let marks = |at: usize| {
        let v = load_unaligned_m128i(s[at..at + 16].try_into().unwrap_or(&[0; 16]));
        move_mask_i8_m128i(bitor_m128i(
            cmp_eq_mask_i8_m128i(v, va),
            cmp_eq_mask_i8_m128i(v, vb),
        ))
    };
    let n = s.len();
    let mut at = 0;
    while at + 16 <= n {
        let found = marks(at);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    let found = if at < n { marks(n - 16) } else { 0 };
    (found != 0).then(|| n - 16 + found.trailing_zeros() as usize)
}

/// Whether `s` holds `b`, for a yes-or-no over a whole value (a comma in a list header): sixteen
/// bytes a step with SSE2 from 16 bytes on ([`any_of_sse2`]), a byte loop below.
#[inline]
pub(crate) fn has_byte(s: &[u8], b: u8) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if s.len() >= 16 {
        return any_of_sse2(s, [b, b, b]);
    }
    s.contains(&b)
}

/// Whether `s` holds `a`, `b` or `c`: as [`has_byte`], for three bytes at once.
#[inline]
pub(crate) fn has_any3(s: &[u8], a: u8, b: u8, c: u8) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if s.len() >= 16 {
        return any_of_sse2(s, [a, b, c]);
    }
    s.iter().any(|&x| x == a || x == b || x == c)
}

/// Whether any byte of `s` (at least 16 bytes) is one of `bytes`, by [`any_lane16`]. memchr's
/// searchers, called directly before, set up aligned and unrolled loops made for long haystacks.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn any_of_sse2(s: &[u8], bytes: [u8; 3]) -> bool {
    use safe_arch::{bitor_m128i, cmp_eq_mask_i8_m128i};
    let [a, b, c] = bytes.map(|x| safe_arch::set_splat_i8_m128i(x as i8));
    any_lane16(s, |v| {
        bitor_m128i(
            bitor_m128i(cmp_eq_mask_i8_m128i(v, a), cmp_eq_mask_i8_m128i(v, b)),
            cmp_eq_mask_i8_m128i(v, c),
        )
    })
}

/// One bit per byte of `block` that equals `b`, byte i in bit i: a whole header section's line
/// feeds for a few instructions per 64 bytes, where a search per line paid its start-up each time.
/// SSE2 compares and `pmovmskb` on x86-64 (through `safe_arch`: the intrinsics need `unsafe` to
/// call from code not itself compiled for SSE2, which is all code on x86-64 as far as the type
/// checker knows); eight-byte words elsewhere.
#[inline(always)]
pub(crate) fn byte_mask64(block: &[u8; 64], b: u8) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use safe_arch::{cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i};
        let wanted = safe_arch::set_splat_i8_m128i(b as i8);
        let mut mask = 0;
        for (k, chunk) in block.chunks_exact(16).enumerate() {
            let chunk: &[u8; 16] = chunk.try_into().unwrap_or(&[0; 16]);
            let hits =
                move_mask_i8_m128i(cmp_eq_mask_i8_m128i(load_unaligned_m128i(chunk), wanted));
            mask |= u64::from(hits as u16) << (16 * k);
        }
        mask
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    byte_mask64_words(block, b)
}

/// A value of at most 64 bytes in a block padded with zeros, for several [`byte_mask64`] masks of
/// it from one copy: where a value is looked at for a few different bytes, the masks cost less
/// than a search for each.
pub(crate) struct Block64 {
    bytes: [u8; 64],
    len: usize,
}

impl Block64 {
    /// `None` when `s` is longer than a block.
    #[inline]
    pub(crate) fn new(s: &[u8]) -> Option<Block64> {
        let mut bytes = [0; 64];
        bytes.get_mut(..s.len())?.copy_from_slice(s);
        Some(Block64 {
            bytes,
            len: s.len(),
        })
    }

    /// Where the value has a space or a control byte (linear white space among them).
    #[inline]
    pub(crate) fn controls(&self) -> u64 {
        let below_bang = byte_mask64_at_most(&self.bytes, b' ');
        below_bang & low_bits(self.len)
    }

    /// Where `b` is in the value, byte i in bit i. `b` must not be 0, which the padding holds.
    #[inline]
    pub(crate) fn mask(&self, b: u8) -> u64 {
        debug_assert_ne!(b, 0);
        byte_mask64(&self.bytes, b)
    }
}

/// The bits below `n`: the bytes of a 64-byte block before index `n`.
#[inline(always)]
pub(crate) fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// The first bit of `mask` from bit `from` up to (not including) bit `to`.
#[inline(always)]
pub(crate) fn first_bit(mask: u64, from: usize, to: usize) -> Option<usize> {
    let m = mask & low_bits(to) & !low_bits(from);
    (m != 0).then(|| m.trailing_zeros() as usize)
}

/// One bit per byte of `block` that is at most `n`, as [`byte_mask64`].
#[inline(always)]
fn byte_mask64_at_most(block: &[u8; 64], n: u8) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use safe_arch::{load_unaligned_m128i, move_mask_i8_m128i, set_splat_i8_m128i};
        let limit = set_splat_i8_m128i(n as i8);
        let mut mask = 0;
        for (k, chunk) in block.chunks_exact(16).enumerate() {
            let chunk = load_unaligned_m128i(chunk.try_into().unwrap_or(&[0; 16]));
            let hits = move_mask_i8_m128i(at_most(chunk, limit));
            mask |= u64::from(hits as u16) << (16 * k);
        }
        mask
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    block
        .iter()
        .enumerate()
        .fold(0, |m, (i, &b)| m | u64::from(b <= n) << i)
}

/// [`byte_mask64`] from eight-byte words, exactly (no borrow between bytes), for targets without
/// SSE2; tested against it on x86-64.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
#[inline]
fn byte_mask64_words(block: &[u8; 64], b: u8) -> u64 {
    const LOW7: u64 = !HIGH_BITS;
    let mut mask = 0;
    for (k, word) in block.chunks_exact(8).enumerate() {
        let t = u64::from_le_bytes(word.try_into().unwrap_or_default()) ^ (LOW_BITS * u64::from(b));
        // High bit set in each byte of `t` that is zero: no carry leaves a byte, as bit 7 is
        // taken out before adding.
        let zero = !(((t & LOW7) + LOW7) | t | LOW7);
        // Gathers the eight high bits into one byte: bit 7 of byte j lands on bit 56 + j.
        let bits = ((zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) & 0xff;
        mask |= bits << (8 * k);
    }
    mask
}

/// `s` without leading and trailing linear white space. Most slices have none, or one space in
/// front: the bytes at each end settle that inline, and only the rest call the loop that trims.
#[inline]
pub(crate) fn trim_lws(s: &[u8]) -> &[u8] {
    match s {
        [first, .., last] if *first > b' ' && *last > b' ' => s,
        // One space before the rest, as after a scheme or a colon: the next most common shape.
        [b' ', second, .., last] if *second > b' ' && *last > b' ' => &s[1..],
        [] => s,
        [only] if *only > b' ' => s,
        _ => trim_lws_loop(s),
    }
}

#[inline(never)]
fn trim_lws_loop(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_lws(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_lws(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mask64_marks_exactly_the_bytes_asked_for() {
        let mut blocks: Vec<[u8; 64]> = (0..64)
            .map(|seed| filler(seed, 64).try_into().unwrap())
            .collect();
        blocks.push([b'\n'; 64]);
        blocks.push([0; 64]);
        blocks.push([0xff; 64]);
        for (i, block) in blocks.iter().enumerate() {
            for b in [b'\n', b':', 0, 0x80, 0xff, block[i % 64]] {
                let want = block
                    .iter()
                    .enumerate()
                    .filter(|(_, &x)| x == b)
                    .fold(0u64, |m, (j, _)| m | 1 << j);
                assert_eq!(byte_mask64(block, b), want, "block {i}, byte {b:#x}");
                assert_eq!(byte_mask64_words(block, b), want, "block {i}, byte {b:#x}");
            }
        }
    }

    #[test]
    fn block64_controls_are_the_bytes_up_to_a_space() {
        for seed in 0..64 {
            for len in [0, 1, 15, 16, 17, 40, 63, 64] {
                let value = filler(seed, len);
                let block = Block64::new(&value).unwrap();
                let want = value
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b <= b' ')
                    .fold(0u64, |m, (i, _)| m | 1 << i);
                assert_eq!(block.controls(), want, "seed {seed}, len {len}");
            }
        }
        assert!(Block64::new(&[b'a'; 65]).is_none());
        assert_eq!(first_bit(0b1011_0000, 0, 64), Some(4));
        assert_eq!(first_bit(0b1011_0000, 5, 64), Some(5));
        assert_eq!(first_bit(0b1011_0000, 6, 7), None);
        assert_eq!(first_bit(1 << 63, 63, 64), Some(63));
    }

    /// Deterministic filler bytes: every value turns up, often next to its neighbours, which is
    /// where a borrow or a carry between the bytes of a word would go wrong.
    fn filler(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 97) % 256) as u8)
            .collect()
    }

    /// Every concatenation of up to `most` of `pieces`, the empty one first, shorter before longer.
    pub(crate) fn joined_pieces<'p>(
        pieces: &'p [&'p [u8]],
        most: u32,
    ) -> impl Iterator<Item = Vec<u8>> + 'p {
        (0..=most).flat_map(move |len| {
            (0..pieces.len().pow(len)).map(move |mut n| {
                let mut v = Vec::new();
                for _ in 0..len {
                    v.extend_from_slice(pieces[n % pieces.len()]);
                    n /= pieces.len();
                }
                v
            })
        })
    }

    /// Every string of up to five bytes over white space, controls and ordinary bytes.
    pub(crate) fn short_strings() -> impl Iterator<Item = Vec<u8>> {
        const ALPHABET: [u8; 8] = [b' ', b'\t', b'\r', b'\n', b'a', 0x01, 0x7f, 0xff];
        (0..=5u32).flat_map(|len| {
            (0..ALPHABET.len().pow(len)).map(move |mut n| {
                (0..len)
                    .map(|_| {
                        let b = ALPHABET[n % ALPHABET.len()];
                        n /= ALPHABET.len();
                        b
                    })
                    .collect()
            })
        })
    }

    #[test]
    fn trim_lws_agrees_with_trimming_byte_by_byte() {
        for s in short_strings() {
            let start = s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len());
            let end = s.iter().rposition(|&b| !is_lws(b)).map_or(start, |e| e + 1);
            assert_eq!(trim_lws(&s), &s[start..end], "{s:?}");
        }
    }

    #[test]
    fn word_searches_agree_with_byte_loops() {
        for len in 0..=40 {
            for seed in 0..8 {
                let mut s = filler(seed, len);
                for at in 0..=len {
                    for b in 0..=u8::MAX {
                        if at < len {
                            s[at] = b;
                        }
                        for (x, y) in [(b, b), (b';', b), (b, b'"'), (0, 0xff)] {
                            let want = s.iter().position(|&c| c == x || c == y);
                            assert_eq!(find_either(&s, x, y), want, "{s:?} {x} {y}");
                        }
                        assert_eq!(find_byte(&s, b), s.iter().position(|&c| c == b));
                        assert_eq!(find_byte_near(&s, b), s.iter().position(|&c| c == b));
                        assert_eq!(has_byte(&s, b), s.contains(&b));
                        let any3 = s.iter().any(|&c| c == b || c == b';' || c == 0xff);
                        assert_eq!(has_any3(&s, b, b';', 0xff), any3);
                        assert_eq!(has_lws(&s), s.iter().any(|&c| is_lws(c)), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn find_either_over_several_steps() {
        for len in [47, 48, 49, 63, 64, 65, 100, 200] {
            let clean = vec![b'a'; len];
            assert_eq!(find_either(&clean, b';', b','), None);
            for at in 0..len {
                for later in [at, at + 1, at + 17, len - 1] {
                    let mut s = clean.clone();
                    s[later.min(len - 1)] = b',';
                    s[at] = b';';
                    assert_eq!(find_either(&s, b';', b','), Some(at), "{len} {at} {later}");
                }
            }
        }
    }

    #[test]
    fn word_masks_mark_the_first_matching_byte() {
        for seed in 0..256 {
            let bytes = filler(seed, 8);
            for at in 0..8 {
                for b in 0..=u8::MAX {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&bytes);
                    w[at] = b;
                    let word = u64::from_le_bytes(w);
                    let first = |marks: u64| (marks != 0).then(|| first_marked(marks));
                    for n in [0x01, 0x21, 0x30, 0x80] {
                        let want = w.iter().position(|&c| c < n);
                        assert_eq!(first(bytes_below(word, n)), want, "{w:?} below {n}");
                    }
                    for n in [0x00, 0x3a, 0x7e] {
                        let want = w.iter().position(|&c| c > n);
                        assert_eq!(first(bytes_above(word, n)), want, "{w:?} above {n}");
                    }
                    let want = w.iter().position(|&c| c == 0);
                    assert_eq!(first(zero_bytes(word)), want, "{w:?} zero");
                }
            }
        }
    }
}
