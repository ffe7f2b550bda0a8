//! A differentiable forward pass, for gradients with respect to the input embeddings
//! (attribution): every weight dequantized to an f32 candle tensor, and every operation a plain
//! candle op that candle's autograd follows (RMS norm, RoPE, softmax and the activations written
//! out; no KV cache, no fused kernel). It mirrors the general path ([`Transformer::forward_batch`]
//! on the candle backend) and is tested against it.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor, D};

use super::{attention_mask, rope_tables, Embedding, Linear, RmsNorm, Transformer};
use crate::error::{Error, Result};
use crate::model::config::{Activation, RopeStyle};
use crate::model::weights::Matrix;

impl Transformer {
    /// This model with every matrix and the embedding table as dense f32 tensors on the CPU,
    /// for [`forward_embeddings`](Self::forward_embeddings). Only a model on the candle CPU
    /// backend converts (load one with `Backend::Candle(Device::Cpu)`): finllm's kernels read
    /// packed blocks that are not kept as tensors.
    pub fn into_dense(mut self) -> Result<Self> {
        if !matches!(&self.backend, super::Backend::Candle(d) if d.is_cpu()) {
            return Err(Error::invalid(
                "backend",
                "a dense copy is made from a model on the candle CPU backend",
            ));
        }
        let dense = |m: &mut Matrix| -> Result<()> {
            if let Matrix::Candle(q) = m {
                let t = match &*q {
                    QMatMul::QTensor(t) => t.dequantize(&Device::Cpu)?,
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(DType::F32)?,
                };
                *q = QMatMul::Tensor(t);
            }
            Ok(())
        };
        for b in &mut self.blocks {
            for l in [
                &mut b.q,
                &mut b.k,
                &mut b.v,
                &mut b.o,
                &mut b.gate,
                &mut b.up,
                &mut b.down,
            ] {
                dense(&mut l.w)?;
            }
        }
        // An output matrix tied to the embedding table shares one dense copy with it.
        let tied = match (&self.lm_head, &self.embed) {
            (Matrix::Candle(QMatMul::QTensor(a)), Embedding::Quantized(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        };
        self.embed = match self.embed {
            Embedding::Quantized(q) => Embedding::Dense(q.dequantize(&Device::Cpu)?),
            Embedding::Dense(t) => Embedding::Dense(t.to_dtype(DType::F32)?),
            e @ Embedding::InPlace(_) => e,
        };
        match (&self.embed, tied) {
            (Embedding::Dense(t), true) => self.lm_head = Matrix::Candle(QMatMul::Tensor(t.clone())),
            _ => dense(&mut self.lm_head)?,
        }
        Ok(self)
    }

    /// The input embeddings of `ids`, `[ids.len(), hidden]` (before any embedding scaling).
    pub fn embeddings(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: self.cfg.vocab_size,
            });
        }
        self.embed
            .lookup(&Tensor::new(ids, &Device::Cpu)?)?
            .to_dtype(DType::F32)
            .map_err(Into::into)
    }

    /// The mean of the embedding table's rows, `[hidden]`: a neutral input for baselines.
    pub fn mean_embedding(&self) -> Result<Tensor> {
        let vocab = self.cfg.vocab_size;
        let mut sum = Tensor::zeros(self.cfg.hidden_size, DType::F32, &Device::Cpu)?;
        let ids: Vec<u32> = (0..vocab as u32).collect();
        for chunk in ids.chunks(4096) {
            sum = (sum + self.embeddings(chunk)?.sum(0)?)?;
        }
        Ok((sum / vocab as f64)?)
    }

    /// Logits `[batch, rows.len(), vocab]` at positions `rows` of sequences given as input
    /// embeddings `x: [batch, tokens, hidden]` (positions from 0), through operations candle
    /// can differentiate: on a dense model ([`into_dense`](Self::into_dense)) the gradient of
    /// any function of the logits flows back to `x`.
    pub fn forward_embeddings(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, h) = x.dims3()?;
        if h != cfg.hidden_size || t == 0 || t > cfg.context_length {
            return Err(Error::invalid(
                "embeddings",
                format!("[{b}, {t}, {h}] does not fit the model (hidden {})", cfg.hidden_size),
            ));
        }
        if rows.is_empty() || rows.iter().any(|&r| r >= t) {
            return Err(Error::invalid("rows", format!("must be non-empty positions below {t}")));
        }
        let positions: Vec<usize> = (0..t).collect();
        let mut x = if cfg.scale_embeddings {
            (x * (cfg.hidden_size as f64).sqrt())?
        } else {
            x.clone()
        };
        let mut rope_cache: Vec<(std::sync::Arc<Vec<f64>>, Tensor, Tensor)> = Vec::new();
        for block in &self.blocks {
            let (cos, sin) = match rope_cache
                .iter()
                .find(|(f, _, _)| std::sync::Arc::ptr_eq(f, &block.inv_freq))
            {
                Some((_, c, s)) => (c.clone(), s.clone()),
                None => {
                    let (c, s) = rope_tables(&positions, &block.inv_freq, &Device::Cpu)?;
                    rope_cache.push((block.inv_freq.clone(), c.clone(), s.clone()));
                    (c, s)
                }
            };
            let hn = rms(&x, &block.attn_norm)?;
            let heads = |l: &Linear, n: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
                let y = linear(l, &hn)?.reshape((b, t, n, cfg.head_dim))?;
                let y = match norm {
                    Some(norm) => rms(&y, norm)?,
                    None => y,
                };
                Ok(y.transpose(1, 2)?.contiguous()?) // [b, n, t, d]
            };
            let q = rope(
                &heads(&block.q, cfg.n_heads, block.q_norm.as_ref())?,
                &cos,
                &sin,
                cfg.rope_style,
            )?;
            let k = rope(
                &heads(&block.k, cfg.n_kv_heads, block.k_norm.as_ref())?,
                &cos,
                &sin,
                cfg.rope_style,
            )?;
            let v = heads(&block.v, cfg.n_kv_heads, None)?;
            // Heads that share a KV head: stack their queries, as the general path does.
            let group = cfg.n_heads / cfg.n_kv_heads;
            let q = q.reshape((b, cfg.n_kv_heads, group * t, cfg.head_dim))?;
            let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * cfg.attn_scale)?; // [b, kv, g*t, t]
            let scores = match attention_mask(t, 0, t, block.span) {
                Some(mask) => {
                    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu)?;
                    scores
                        .reshape((b, cfg.n_kv_heads, group, t, t))?
                        .broadcast_add(&mask)?
                        .reshape((b, cfg.n_kv_heads, group * t, t))?
                }
                None => scores,
            };
            // Softmax with the row maximum held constant (it cancels).
            let max = scores.max_keepdim(D::Minus1)?.detach();
            let e = scores.broadcast_sub(&max)?.exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let out = probs.matmul(&v)?; // [b, kv, g*t, d]
            let out = out
                .reshape((b, cfg.n_heads, t, cfg.head_dim))?
                .transpose(1, 2)?
                .reshape((b, t, cfg.n_heads * cfg.head_dim))?;
            let mut attn = linear(&block.o, &out)?;
            if let Some(norm) = &block.post_attn_norm {
                attn = rms(&attn, norm)?;
            }
            x = (x + attn)?;
            let hn = rms(&x, &block.ffn_norm)?;
            let gate = linear(&block.gate, &hn)?;
            let up = linear(&block.up, &hn)?;
            let act = match cfg.activation {
                Activation::Silu => (&gate * candle_nn::ops::sigmoid(&gate)?)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let mut mlp = linear(&block.down, &(act * up)?)?;
            if let Some(norm) = &block.post_ffn_norm {
                mlp = rms(&mlp, norm)?;
            }
            x = (x + mlp)?;
        }
        // The final norm and the output matrix only on the rows asked for.
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let x = x.index_select(&Tensor::new(ids.as_slice(), &Device::Cpu)?, 1)?;
        let normed = rms(&x, &self.norm)?;
        dense_matmul(&self.lm_head, &normed)
    }
}

/// `x @ W^T (+ b)` for a dense matrix, over any leading dimensions.
fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let y = dense_matmul(&l.w, x)?;
    Ok(match &l.b {
        Some(bias) => y.broadcast_add(&Tensor::from_slice(bias, bias.len(), &Device::Cpu)?)?,
        None => y,
    })
}

fn dense_matmul(m: &Matrix, x: &Tensor) -> Result<Tensor> {
    let Matrix::Candle(QMatMul::Tensor(w)) = m else {
        return Err(Error::invalid(
            "backend",
            "forward_embeddings needs a dense model (into_dense)",
        ));
    };
    Ok(x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })?)
}

/// `x @ Wᵀ` with the weight `W: [out, in]` held constant: the backward pass gives the input's
/// gradient only. (Candle's own matmul would also compute, allocate and accumulate a gradient
/// for every weight matrix, a third of the matrix work and the whole model's size in memory
/// traffic per backward pass, all of it discarded: attribution differentiates w.r.t. inputs.)
struct FrozenMatmul {
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let data = storage.as_slice::<f32>()?;
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-matmul: input not contiguous".into()))?;
        let x = Tensor::from_slice(&data[a..b], layout.shape(), &Device::Cpu)?;
        let y = x.broadcast_matmul(&self.w.t()?)?.contiguous()?;
        let (st, l) = y.storage_and_layout();
        match (&*st, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(c), Some((0, _))) => Ok((c.clone(), y.shape().clone())),
            _ => Err(candle_core::Error::Msg(
                "frozen-matmul: unexpected output storage".into(),
            )),
        }
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d(x Wᵀ)/dx applied to the output's gradient: grad @ W.
        Ok(Some(grad.broadcast_matmul(&self.w)?))
    }
}

/// RMS norm over the last dimension, written out: `x / sqrt(mean(x²) + eps) * w`.
fn rms(x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x.broadcast_div(&(ms + f64::from(norm.eps))?.sqrt()?)?;
    Ok(y.broadcast_mul(&norm.w)?)
}

/// Rotate `x: [b, heads, t, d]` by the angles `cos, sin: [t, d/2]`, as candle's `rope`
/// (halves) or `rope_i` (interleaved pairs) do.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let (b, n, t, d) = x.dims4()?;
    let half = d / 2;
    Ok(match style {
        RopeStyle::Neox => {
            let x1 = x.narrow(3, 0, half)?;
            let x2 = x.narrow(3, half, half)?;
            let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let c = (x1.broadcast_mul(sin)? + x2.broadcast_mul(cos)?)?;
            Tensor::cat(&[a, c], 3)?
        }
        RopeStyle::Interleaved => {
            let pairs = x.reshape((b, n, t, half, 2))?;
            let x1 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
            let x2 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
            let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let c = (x1.broadcast_mul(sin)? + x2.broadcast_mul(cos)?)?;
            Tensor::stack(&[a, c], 4)?.reshape((b, n, t, d))?
        }
    })
}
