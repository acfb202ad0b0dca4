"""IATV — Li et al., "Identity-Aware Textual-Visual Matching with Latent Co-attention",
ICCV 2017 (``../shared/papers/iatv_iccv2017.md``).

* ``stage1``: the CNN–LSTM of §3.1 trained with the CMCE loss (Eqs. 1–3);
* ``buffers``: the identity feature buffers V and S of §3.1.1;
* ``stage2``: the latent co-attention network of §3.2 (Eqs. 6–12);
* ``retrieval``: stage-1 candidate mining for stage 2 and two-stage re-ranking (§4.2).
"""
