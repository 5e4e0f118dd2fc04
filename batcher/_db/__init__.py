"""The database: the schema (``models``), engines (``engine``), the job store's contract
(``contract``: ``JobStore``, ``store_for``) and its two peers (``postgres``, ``sqlite``), the row
types they share (``rows``), and the statements of liveness and recovery (``recovery``)."""
