"""Crypto, no I/O: the CKKS codec (``ckks``), quantise/pack and masks (``masking``), SecAgg secrets and shares
(``secagg``), and an update's encode / add / decode (``updates``)."""
