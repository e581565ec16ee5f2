"""What `hrmc bench --estimate ane` assumes of each chip's Neural Engine, with where each number was published.

Nothing here was measured by hrmc: no Apple hardware is reachable where it is developed. Every number
carries its source (`Chip.sources`, printed with each estimate); a number no public source gives for
that chip is listed in `Chip.assumed` and said so in the printed output.

Float16 throughput. Apple publishes one Neural Engine figure per chip, in "trillion operations per
second" (TOPS), without saying of which type. Two readings:
- up to M3 (M1 11, M2 15.8, M3 18) we take the figure as float16 operations: Apple's own ML-research
  article (machinelearning.apple.com/research/neural-engine-transformers, 2022) gives the A15's 15.8
  (the Neural Engine M2 has) as teraflops, a floating-point rate;
- from A17 Pro on (A17 Pro 35, M4 38, A18 35) the figure doubled from one generation to the next while
  float16 work did not get faster: Geekbench ML's Core ML score barely moved from A16 (17 TOPS) to
  A17 Pro (hollance/neural-engine issue #27: 3349 → 3402), and on an M4 the float16 peak measured 18.6
  TOPS against 35.1 for int8 (maderix/ANE README, 128 chained 512-channel convs). These are int8
  rates: we halve them.
A reverse-engineering guide (ane-guide.readthedocs.io, ch. 9 "Roofline") reads even M1's 11 as int8
and measures 1.8–4.8 float16 TFLOP/s on an M1; ANEForge's contributed rooflines (sbryngelson/ANEForge
bench/results/ROOFLINES.md) measure 2.7–4.6 TF/s on M1-family chips and 5.4 on M4. The published peaks used here
are therefore the optimistic end: sustained float16 throughput is lower.

Memory bandwidth: the SoC's unified-memory bandwidth as Apple states it for the Macs (press
releases and tech specs). Apple gives none for iPhone chips; see each entry.

Dispatch. `call_overhead` is one prediction: one compiled ANE program dispatched and waited for,
measured at about 0.2 ms through the private runtime below Core ML (Core ML adds its own on top).
`op_overhead` is what each further op inside that program costs beyond its work: no source measures
it directly, so OP_OVERHEAD derives it from a public chained-conv measurement (see there); it is
of the order of 0.05 µs, small against the 0.2 ms call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

TERA, GIGA = 1e12, 1e9
MILLI, MICRO = 1e-3, 1e-6

# Per op inside one compiled program, beyond its own FLOPs and bytes. maderix/ANE issue #3 (comment by
# tuxillo, Mac mini M4, inmem_peak): 64, 128 and 256 chained 256-channel 1×1 convs over 64 positions run in
# 0.124, 0.153 and 0.220 ms: 0.50 µs per added conv. Each conv is 2·256·256·64 = 8.39 MFLOP, 0.45 µs at the
# 18.6 TFLOP/s float16 peak measured on M4 (maderix/ANE README): 0.05 µs per op is left for its overhead.
# Measured on M4 only; used for every chip.
OP_OVERHEAD = 0.05 * MICRO
OP_OVERHEAD_SOURCE = ("derived: maderix/ANE issue #3 (M4, 64/128/256 chained 256-ch convs: 0.124/0.153/0.220 ms, "
                      "0.50 µs per added conv, 0.45 µs of it its FLOPs at 18.6 TFLOP/s)")
# No public measurement of the per-call dispatch on these chips: the M1 (0.22 ms) and M4 (0.2 ms) ones bracket it.
CALL_OVERHEAD_ASSUMED = 0.2 * MILLI
CALL_OVERHEAD_ASSUMED_SOURCE = "not published for this chip: 0.2 ms assumed (M1 0.22 ms, M4 0.2 ms measured)"


@dataclass(frozen=True)
class Chip:
    name: str  # as --chip takes it
    label: str
    float16_flops: float  # FLOP/s, the Neural Engine's peak
    memory_bandwidth: float  # bytes/s, the SoC's unified memory
    call_overhead: float  # seconds per prediction call (one ANE program)
    sources: dict[str, str]  # per number above, where it was published
    assumed: tuple[str, ...] = ()  # the numbers above no public figure for this chip gives
    op_overhead: float = OP_OVERHEAD  # seconds per op inside the program
    op_overhead_source: str = OP_OVERHEAD_SOURCE

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "float16_tflops": self.float16_flops / TERA,
                "memory_gb_per_s": self.memory_bandwidth / GIGA, "call_overhead_ms": self.call_overhead / MILLI,
                "op_overhead_us": self.op_overhead / MICRO,
                "sources": self.sources | {"op_overhead": self.op_overhead_source}, "assumed": list(self.assumed)}


A17_PRO = Chip("a17", "Apple A17 Pro",
               # Apple Newsroom, iPhone 15 Pro announcement (2023-09-12): Neural Engine "up to 2x faster", 35
               # trillion operations/s: int8 (Geekbench ML's Core ML score barely above A16's at 17 TOPS,
               # hollance/neural-engine issue #27).
               float16_flops=35 / 2 * TERA,
               # Apple publishes no iPhone memory bandwidth. A16's LPDDR5-6400 on a 64-bit bus gives 51.2 GB/s
               # (topcpu.net's A16 page); A17 Pro is reported with LPDDR5 too: assumed the same.
               memory_bandwidth=51.2 * GIGA,
               call_overhead=CALL_OVERHEAD_ASSUMED,
               sources={"float16_flops": "Apple iPhone 15 Pro announcement (2023-09-12): 35 TOPS, int8 "
                                         "(hollance/neural-engine issue #27): halved",
                        "memory_bandwidth": "not published by Apple: 51.2 GB/s assumed (A16's LPDDR5-6400 × 64 bit, "
                                            "topcpu.net)",
                        "call_overhead": CALL_OVERHEAD_ASSUMED_SOURCE},
               assumed=("memory_bandwidth", "call_overhead"))

CHIPS: dict[str, Chip] = {chip.name: chip for chip in (
    Chip("m1", "Apple M1",
         # Apple Newsroom, "Apple unleashes M1" (2020-11-10): 16-core Neural Engine, 11 trillion operations/s.
         float16_flops=11 * TERA,
         # Apple gives no M1 figure; "Apple unveils M2" (2022-06-06) calls M2's 100 GB/s "50 percent more than
         # M1" (≈ 67 GB/s). 68.25 GB/s is LPDDR4X-4266 on M1's 128-bit bus, as AnandTech reported it.
         memory_bandwidth=68.25 * GIGA,
         # ANEForge docs/developer/optimizer-and-cost.md: the M1 (h13) roofline fit's "dispatch overhead 0.22 ms";
         # ane-guide ch. 9: "every dispatch pays a 0.23 ms floor" on M1.
         call_overhead=0.22 * MILLI,
         sources={"float16_flops": "Apple Newsroom 'Apple unleashes M1' (2020-11-10): 11 TOPS, read as float16",
                  "memory_bandwidth": "'Apple unveils M2' (2022-06-06): M2's 100 GB/s is 50 % more than M1; "
                                      "LPDDR4X-4266 × 128 bit = 68.25 GB/s (AnandTech)",
                  "call_overhead": "sbryngelson/ANEForge docs/developer/optimizer-and-cost.md: M1 dispatch 0.22 ms"}),
    Chip("m2", "Apple M2",
         # Apple Newsroom, "Apple unveils M2 ..." (2022-06-06): 15.8 trillion operations/s, 100GB/s of unified
         # memory bandwidth. The same 15.8 is "TFlops" for A15 in Apple's neural-engine-transformers article.
         float16_flops=15.8 * TERA,
         memory_bandwidth=100 * GIGA,
         call_overhead=CALL_OVERHEAD_ASSUMED,
         sources={"float16_flops": "Apple Newsroom 'Apple unveils M2' (2022-06-06): 15.8 TOPS; 15.8 TFlops "
                                   "(A15) in machinelearning.apple.com/research/neural-engine-transformers",
                  "memory_bandwidth": "Apple Newsroom 'Apple unveils M2' (2022-06-06): 100 GB/s",
                  "call_overhead": CALL_OVERHEAD_ASSUMED_SOURCE},
         assumed=("call_overhead",)),
    Chip("m3", "Apple M3",
         # 18 TOPS as Apple states it for M3 (Ars Technica, "Apple announces M4 ..." 2024-05-07: "The M3's Neural
         # Engine is only capable of 18 TOPS"); read as float16 like M1/M2 (before the A17 Pro's int8 figures).
         float16_flops=18 * TERA,
         # Apple's MacBook Pro (M3) and MacBook Air (M3) tech specs: "100GB/s memory bandwidth".
         memory_bandwidth=100 * GIGA,
         call_overhead=CALL_OVERHEAD_ASSUMED,
         sources={"float16_flops": "Apple, 18 TOPS for M3 (Ars Technica 2024-05-07), read as float16",
                  "memory_bandwidth": "Apple MacBook Pro/Air (M3) tech specs: 100 GB/s",
                  "call_overhead": CALL_OVERHEAD_ASSUMED_SOURCE},
         assumed=("call_overhead",)),
    Chip("m4", "Apple M4",
         # Apple Newsroom, "Apple introduces M4 chip" (2024-05-07): 38 trillion operations/s and 120GB/s. The 38
         # is int8: maderix/ANE's README measures 18.6 float16 TOPS and 35.1 int8 (W8A8) on M4; half is 19.
         float16_flops=38 / 2 * TERA,
         memory_bandwidth=120 * GIGA,
         # maderix/ANE docs/ANE_INTERNALS.md (M4 Max): every evaluate path converges to ~0.2 ms per kernel at 768×256.
         call_overhead=0.2 * MILLI,
         sources={"float16_flops": "Apple Newsroom 'Apple introduces M4 chip' (2024-05-07): 38 TOPS, int8 "
                                   "(maderix/ANE README: 18.6 fp16 vs 35.1 int8 measured): halved",
                  "memory_bandwidth": "Apple Newsroom 'Apple introduces M4 chip' (2024-05-07): 120 GB/s",
                  "call_overhead": "maderix/ANE docs/ANE_INTERNALS.md: ~0.2 ms per kernel evaluation (M4 Max)"}),
    A17_PRO,
    replace(A17_PRO, name="a18", label="Apple A18 / A18 Pro",
            # Apple's iPhone 16 / 16 Pro announcement (2024-09-09): 16-core Neural Engine, 35 trillion operations/s
            # (as reported by techmehr.com and Wikipedia's "Apple A18"): int8 like A17 Pro's, halved.
            float16_flops=35 / 2 * TERA,
            # Apple states "17 percent more memory bandwidth" than the previous generation (notebookcheck.net,
            # 2024-09-09), not a figure: 1.17 × the assumed 51.2 GB/s ≈ 60 GB/s (LPDDR5X-7500 on 64 bits).
            memory_bandwidth=60 * GIGA,
            sources=A17_PRO.sources | {
                "float16_flops": "Apple iPhone 16 announcement (2024-09-09): 35 TOPS (techmehr.com, Wikipedia "
                                 "'Apple A18'), int8: halved",
                "memory_bandwidth": "Apple: '17 % more memory bandwidth' (notebookcheck.net 2024-09-09) × the "
                                    "assumed 51.2 GB/s of A16/A17 Pro"}),
)}
