#!/usr/bin/env bash
# Lower one HRM checkpoint to every hrmc target, gate each shipped artifact against the
# PyTorch reference, and keep the reports.
#
# Usage: gate.sh (--checkpoint PATH | --preset NAME) [--seq-len N] [--inputs F.npz] [--policy P] [--batch N]
#                [--psnr DB] [--executors LIST] [OUTDIR]
#   defaults: --policy q-halt, --batch 1, no --psnr floor, --executors onnx,static,mlx,coreml,ane, OUTDIR hrmc-artifacts
#
# Writes OUTDIR/model.onnx (+ .step.onnx), model.static.onnx (+ .step), model-mlx/,
# model.mlpackage, model-ane.mlpackage (functions inference and step), model.aimodel (with coreai), and
# OUTDIR/reports/: one `hrmc parity --json` report per executor (onnx.json, static.json, mlx.json,
# coreml.json, ane.json, coreai.json), inspect-ane.json and summary.txt.
#
# A model is required: the script never gates the built-in demo model by default (exit 2 without one).
# --seq-len N: the sequence length to export for, where the checkpoint does not fix it (RoPE, and no
#   dataset.json found from all_config.yaml's data_path); every artifact records it.
# --inputs F.npz: the inputs to export for and to gate on ('labels' optional: accuracy is reported).
# --psnr DB: an extra absolute PSNR floor for the ane (float16) gate (hrmc parity --psnr).
# --executors LIST: comma-separated subset of onnx,static,mlx,coreml,ane,coreai to lower and gate. coreai (a Core
#   AI asset for macOS 27 / iOS 27) is not in the default: it needs `pip install 'hrmc[coreai]'`, and converts
#   the model itself (a minute or more), not the ONNX export.
# Each gate reads the model, policy, budget and sequence length from the artifact's own record.
#
# Exit: 0 every gate passed; 1 a gate failed (or a step failed otherwise);
#       2 an hrmc command refused its input (exit 2: bad input, one line on stderr).
# Set HRMC to the hrmc command to use (default: hrmc on PATH).
set -euo pipefail

HRMC="${HRMC:-hrmc}"
model=()
length=()
inputs=()
policy=q-halt
batch=1
psnr=()
executors=onnx,static,mlx,coreml,ane
out=hrmc-artifacts

usage() { sed -n '5,7s/^# \{0,1\}//p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --checkpoint) [ $# -ge 2 ] || usage; model=(--checkpoint "$2"); shift 2 ;;
    --preset) [ $# -ge 2 ] || usage; model=(--preset "$2"); shift 2 ;;
    --seq-len) [ $# -ge 2 ] || usage; length=(--seq-len "$2"); shift 2 ;;
    --inputs) [ $# -ge 2 ] || usage; inputs=(--inputs "$2"); shift 2 ;;
    --policy) [ $# -ge 2 ] || usage; policy="$2"; shift 2 ;;
    --batch) [ $# -ge 2 ] || usage; batch="$2"; shift 2 ;;
    --psnr) [ $# -ge 2 ] || usage; psnr=(--psnr "$2"); shift 2 ;;
    --executors) [ $# -ge 2 ] || usage; executors="$2"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "gate.sh: unknown option $1" >&2; usage ;;
    *) out="$1"; shift ;;
  esac
done

if [ ${#model[@]} -eq 0 ]; then
  echo "gate.sh: name the model to gate: --checkpoint PATH or --preset NAME" >&2
  exit 2
fi

for name in ${executors//,/ }; do
  case "$name" in
    onnx|static|mlx|coreml|ane|coreai) ;;
    *) echo "gate.sh: --executors: unknown executor $name (choose from onnx,static,mlx,coreml,ane,coreai)" >&2
       exit 2 ;;
  esac
done
wanted() { case ",$executors," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# The export fixes the model, policy, sequence length (and the inputs' shape); every artifact lowered from
# it records them, and each gate reads them back from the artifact (a Core ML package's batch too).
opts=("${model[@]}" --policy "$policy" --batch "$batch" ${length[@]+"${length[@]}"} ${inputs[@]+"${inputs[@]}"})
reports="$out/reports"
rm -rf "$reports"  # this run's reports only
mkdir -p "$reports"
say() { echo "== $*" >&2; }

# 1. The structured export (ONNX Loops) every target is lowered from. Nothing can follow a failure here.
say "export ${model[*]} --policy $policy: $out/model.onnx"
"$HRMC" export "${opts[@]}" -o "$out/model.onnx"

# 2. Lower to each target and 3. gate the shipped file(s) as they are. Failures are recorded, not
# fatal, so every report is kept.
summary=()
status=0  # the script's exit code: 2 beats 1 beats 0

record() {  # record NAME CODE WHAT VERDICT
  local name="$1" code="$2" what="$3" verdict="$4"
  if [ "$code" -eq 2 ]; then
    status=2
  elif [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=1
  fi
  summary+=("$(printf '%-8s %-5s (%s exit %s)' "$name" "$verdict" "$what" "$code")")
}

gate() {  # gate EXECUTOR ARTIFACT
  local executor="$1" artifact="$2" report="$reports/$1.json" code=0 verdict
  say "gate $executor: $artifact"
  # ${psnr[@]+...}: an empty array under `set -u` in the bash 3.2 of macOS runners
  "$HRMC" parity torch "$executor" --artifact "$artifact" --batch "$batch" ${inputs[@]+"${inputs[@]}"} \
    ${psnr[@]+"${psnr[@]}"} --json \
    > "$report" || code=$?
  if [ -s "$report" ]; then
    # a report was printed: exit 0 is a pass, exit 1 a gate failure
    case "$code" in 0) verdict=PASS ;; 1) verdict=FAIL ;; *) verdict=ERROR ;; esac
  else
    rm -f "$report"  # an error prints no report: its one line is on stderr
    verdict=ERROR
  fi
  record "$executor" "$code" gate "$verdict"
}

# The structured export is an artifact too (onnxruntime runs its Loops).
if wanted onnx; then gate onnx "$out/model.onnx"; fi

ane_lowered=0
# target:executor:artifact
for entry in \
  "onnx:static:$out/model.static.onnx" \
  "mlx:mlx:$out/model-mlx" \
  "coreml:coreml:$out/model.mlpackage" \
  "ane:ane:$out/model-ane.mlpackage"; do
  IFS=: read -r target executor artifact <<< "$entry"
  wanted "$executor" || continue
  code=0
  say "lower --target $target: $artifact"
  "$HRMC" lower --target "$target" --onnx-model "$out/model.onnx" --batch "$batch" -o "$artifact" || code=$?
  if [ "$code" -eq 0 ]; then
    gate "$executor" "$artifact"
    [ "$executor" != ane ] || ane_lowered=1
  else
    record "$executor" "$code" lower ERROR  # nothing to gate
  fi
done

# Core AI converts the model itself (torch.export), not the ONNX export: the same model options.
if wanted coreai; then
  code=0
  say "lower --target coreai: $out/model.aimodel"
  "$HRMC" lower --target coreai "${opts[@]}" -o "$out/model.aimodel" || code=$?
  if [ "$code" -eq 0 ]; then gate coreai "$out/model.aimodel"; else record coreai "$code" lower ERROR; fi
fi

# 4. The ANE package's readiness report (op counts, what keeps work off the ANE).
if [ "$ane_lowered" -eq 1 ]; then
  code=0
  say "inspect $out/model-ane.mlpackage"
  "$HRMC" inspect "$out/model-ane.mlpackage" --json > "$reports/inspect-ane.json" || code=$?
  [ -s "$reports/inspect-ane.json" ] || rm -f "$reports/inspect-ane.json"
  if [ "$code" -eq 0 ]; then verdict=PASS; else verdict=ERROR; fi
  record inspect "$code" inspect "$verdict"
fi

say "summary ($reports/summary.txt)"
printf '%s\n' ${summary[@]+"${summary[@]}"} | tee "$reports/summary.txt"
exit "$status"
