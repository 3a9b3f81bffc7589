"""NBD (Network Block Device) support: the block-level data path of ioband.

:mod:`ioband.nbd.protocol` is a sans-I/O codec for the server side of the protocol (fixed
newstyle handshake, transmission phase); :mod:`ioband.nbd.replies` builds transmission replies;
:mod:`ioband.nbd.constants` holds the wire constants.
"""
