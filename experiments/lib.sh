# Shared by the experiments' run.sh scripts (source it from the repository root, with DEQKIT
# set): the resumable stages every runner has.

# train_or_resume CONFIG SEED RUN_DIR MARKER: train CONFIG with SEED into RUN_DIR, or continue
# it from its checkpoint; skipped once MARKER exists, which it creates when training ends.
train_or_resume() {
    local config=$1 seed=$2 run_dir=$3 marker=$4
    if [ -f "$run_dir/checkpoint.pt" ] && [ ! -f "$marker" ]; then
        "$DEQKIT" train --resume "$run_dir" --no-progress
    elif [ ! -f "$marker" ]; then
        "$DEQKIT" train --config "$config" --seed "$seed" --out-dir "$run_dir" --no-progress
    fi
    touch "$marker"
}

# eval_json FILE CHECKPOINT [deqkit eval flags...]: the JSON line of `deqkit eval` into FILE,
# written whole or not at all; skipped if FILE exists.
eval_json() {
    local file=$1 checkpoint=$2
    shift 2
    [ -f "$file" ] && return 0
    "$DEQKIT" eval "$checkpoint" "$@" >"$file.tmp"
    mv "$file.tmp" "$file"
}
