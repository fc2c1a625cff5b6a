//! Buffer pool: a pair holds a buffer only while bytes wait to be written.

/// Free list of equally sized byte buffers, kept to at most `cap` entries.
pub struct Pool {
    free: Vec<Box<[u8]>>,
    size: usize,
    cap: usize,
}

impl Pool {
    pub fn new(size: usize, cap: usize) -> Self {
        Pool {
            free: Vec::new(),
            size,
            cap,
        }
    }

    pub fn buffer_size(&self) -> usize {
        self.size
    }

    pub fn get(&mut self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    pub fn put(&mut self, buf: Box<[u8]>) {
        if self.free.len() < self.cap && buf.len() == self.size {
            self.free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_caps_free_buffers() {
        let mut pool = Pool::new(1024, 1);
        let a = pool.get();
        let b = pool.get();
        let a_ptr = a.as_ptr();
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.free.len(), 1);
        let again = pool.get();
        assert_eq!(again.as_ptr(), a_ptr);
    }
}
