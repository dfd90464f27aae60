//! Buffers that start on a 64-byte boundary, for what the kernels load and store in
//! 64-byte rows (an AMX tile row, an AVX-512 vector).
//!
//! The allocator aligns large buffers to 16 bytes only, so before this every such row
//! straddled two cache lines. In a one-core AMX prototype (4096 x 960 x 576, the
//! kernel's loop and layout unchanged) aligning both operands took the product from
//! 310-380 to 1,060-1,160 GFLOP/s, about what oneDNN reaches on the same shape; with
//! the operands aligned, aligning the output too gave 766 -> 983 (medians of 15
//! interleaved runs).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use anyhow::Result;
use bytemuck::{Pod, Zeroable};
use candle_core::{Device, Shape, Tensor};

/// One cache line: the allocation unit that carries the alignment.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `len` elements of `T`, the first on a 64-byte boundary.
#[derive(Clone)]
pub struct Aligned<T> {
    lines: Vec<Line>,
    len: usize,
    elem: PhantomData<T>,
}

impl<T: Pod> Aligned<T> {
    /// `len` zero elements.
    pub fn zeroed(len: usize) -> Self {
        let lines = (len * size_of::<T>()).div_ceil(size_of::<Line>());
        Self {
            lines: bytemuck::zeroed_vec(lines),
            len,
            elem: PhantomData,
        }
    }
}

impl<T: Pod> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// Values the kernels write before anyone reads them, starting on a line: a `Vec`
/// over-allocated by up to a line, whose leading padding is zeroed, so it becomes a
/// tensor (a view past the padding) without a copy.
pub struct Output {
    buf: Vec<f32>,
    offset: usize,
}

impl Output {
    /// Room for `len` values, uninitialised: [`Output::assume_written`] must follow
    /// the writes.
    pub fn with_capacity(len: usize) -> Self {
        let per_line = size_of::<Line>() / size_of::<f32>();
        let mut buf: Vec<f32> = Vec::with_capacity(len + per_line - 1);
        let offset = buf.as_ptr().align_offset(size_of::<Line>());
        buf.resize(offset, 0.0);
        Self { buf, offset }
    }

    /// Where value 0 goes, on a 64-byte boundary.
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        // SAFETY: the capacity covers offset + len.
        unsafe { self.buf.as_mut_ptr().add(self.offset) }
    }

    /// Declares the `len` values written.
    ///
    /// # Safety
    /// All `len` values (the `len` given to [`Output::with_capacity`]) were written.
    pub unsafe fn assume_written(&mut self, len: usize) {
        self.buf.set_len(self.offset + len);
    }

    /// The values as a CPU tensor of `shape`, sharing the buffer.
    pub fn into_tensor(self, shape: impl Into<Shape>) -> Result<Tensor> {
        let len = self.buf.len() - self.offset;
        let all = Tensor::from_vec(self.buf, len + self.offset, &Device::Cpu)?;
        Ok(all.narrow(0, self.offset, len)?.reshape(shape)?)
    }
}

impl Deref for Output {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.offset..]
    }
}

impl DerefMut for Output {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.offset..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_holds_zeros() {
        for len in [0, 1, 31, 32, 33, 1000] {
            let mut b = Aligned::<u16>::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            assert_eq!(b.as_ptr() as usize % 64, 0, "len {len}");
            b.iter_mut().for_each(|x| *x = 7);
            assert_eq!(b.iter().map(|&x| x as usize).sum::<usize>(), 7 * len);
        }
    }

    #[test]
    fn output_starts_on_a_line_and_becomes_its_tensor() {
        for len in [1, 6, 17] {
            let mut out = Output::with_capacity(len);
            assert_eq!(out.as_mut_ptr() as usize % 64, 0, "len {len}");
            for i in 0..len {
                // SAFETY: inside the capacity.
                unsafe { *out.as_mut_ptr().add(i) = i as f32 };
            }
            // SAFETY: every value was written.
            unsafe { out.assume_written(len) };
            assert_eq!(out.len(), len);
            let t = out.into_tensor(len).unwrap();
            let want: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(t.to_vec1::<f32>().unwrap(), want);
        }
    }
}
