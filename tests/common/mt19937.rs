//! numpy's legacy `numpy.random.RandomState` (MT19937), as far as the fixture weights use it.
//!
//! The large fixture weights were drawn with `RandomState(seed).standard_normal(n)` and
//! `RandomState(31).randint(-8, 9, size)`; regenerating them bit-identically needs the same
//! stream, the same seeding and the same legacy transformations, so this follows numpy's C
//! sources (`mt19937.c`, `legacy-distributions.c`, `distributions.c`) step by step.

const N: usize = 624;
const M: usize = 397;

pub struct RandomState {
    key: [u32; N],
    pos: usize,
    /// The second value of the last polar Box-Muller pair (numpy's `gauss` / `has_gauss`).
    gauss: Option<f64>,
}

impl RandomState {
    /// `RandomState(seed)` for an integer seed: numpy's `mt19937_seed`, which is the reference
    /// `init_genrand` (not `init_by_array`, which numpy uses for array seeds).
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        key[0] = seed;
        for i in 1..N {
            key[i] = 1812433253u32.wrapping_mul(key[i - 1] ^ (key[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { key, pos: N, gauss: None }
    }

    /// Regenerates the whole state block (the reference `genrand_int32` refill, written with
    /// wrapping indices; entries below `i` are already the new ones, as in the reference).
    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.key[i] & 0x8000_0000) | (self.key[(i + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.key[i] = self.key[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// `genrand_int32`: the next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.twist();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `legacy_double` (`genrand_res53`): 53 random bits from two outputs, in [0, 1).
    pub fn random_double(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67108864.0 + b) / 9007199254740992.0
    }

    /// `legacy_gauss`, what `RandomState.standard_normal` draws: the polar Box-Muller method,
    /// whose second value is cached for the next call (also across calls of `standard_normal`).
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.random_double() - 1.0;
            let x2 = 2.0 * self.random_double() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `RandomState.randint(low, high)` for the default int64 dtype and a range that fits in
    /// 32 bits: numpy's masked rejection sampling (`buffered_bounded_masked_uint32`), one
    /// 32-bit output per try, masked to the smallest `2^k - 1` covering `high - low - 1`.
    pub fn randint(&mut self, low: i64, high: i64) -> i64 {
        let range = high - low - 1;
        assert!((0..=u32::MAX as i64).contains(&range), "randint range {low}..{high} needs the 64-bit path");
        if range == 0 {
            return low; // numpy draws nothing here
        }
        let range = range as u32;
        let mask = u32::MAX >> range.leading_zeros();
        loop {
            let v = self.next_u32() & mask;
            if v <= range {
                return low + v as i64;
            }
        }
    }
}
