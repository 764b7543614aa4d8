//! Plain text: documents tokenized, joined with EOS and packed into windows of `max_len`.

use std::collections::VecDeque;

use crate::error::Result;
use crate::example::Example;
use crate::tokenizer::TextTokenizer;

/// Packs documents into full windows. Packing wastes no compute on padding and is how causal
/// LMs are pretrained (HF's `run_clm.py` `group_texts`); the price is that a window may start
/// mid-document, and the token that crosses a window boundary is never predicted.
#[derive(Debug, Clone)]
pub(crate) struct Packer {
    window: usize,
    tokens: VecDeque<u32>,
    /// The line of the document the current window starts in, for error messages.
    pub first_line: usize,
}

impl Packer {
    pub fn new(window: usize) -> Self {
        Self { window, tokens: VecDeque::new(), first_line: 0 }
    }

    /// Adds one document: its tokens with the tokenizer's special tokens (BOS for LLaMA), then
    /// EOS so the model learns where documents end.
    pub fn push_document(&mut self, tokenizer: &TextTokenizer, text: &str, eos: u32, line: usize) -> Result<()> {
        if self.tokens.is_empty() {
            self.first_line = line;
        }
        self.tokens.extend(tokenizer.encode(text, true)?);
        self.tokens.push_back(eos);
        Ok(())
    }

    /// The next full window, if the documents so far fill one.
    pub fn pop_full(&mut self) -> Option<Example> {
        (self.tokens.len() >= self.window).then(|| self.take(self.window))
    }

    /// The last, shorter window at the end of the data (kept: dropping it would silently lose
    /// the end of the text).
    pub fn pop_rest(&mut self) -> Option<Example> {
        (!self.tokens.is_empty()).then(|| self.take(self.tokens.len()))
    }

    fn take(&mut self, n: usize) -> Example {
        Example::all_supervised(self.tokens.drain(..n).collect())
    }
}
