#!/usr/bin/env bash
# Both stages on UCF-101 with accelerate, then evaluation. UCF-101 as distributed lies under $DATA:
#   $DATA/UCF-101/<Class>/v_<Class>_gXX_cYY.avi   and   $DATA/ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt
#
#   DATA=/data/UCF101 bash examples/train_ucf101.sh
#
# Every setting can be overridden from the environment (the test runs it on the embedded set, on CPU, with
# the quickstart configs and EXTRA="--max_train_steps 2").
set -euo pipefail
DATA=${DATA:-/data/UCF101}
RUN=${RUN:-runs/ucf101}
LAUNCH=${LAUNCH:-"accelerate launch --config_file train_configs/accelerate/multi_gpu.yaml"}
VAE_CONFIG=${VAE_CONFIG:-train_configs/vae/ucf101_128.yaml}
DIT_CONFIG=${DIT_CONFIG:-train_configs/dit/ucf101_class.yaml}
EXTRA=${EXTRA:-}
FVD_ARGS=${FVD_ARGS:-"--protocol stylegan-v"}

# 1. The autoencoder (UCF-101 train list of split 1, held-out clips of its test list for validation).
$LAUNCH -m vidtwin_gen.training.train_vae --config "$VAE_CONFIG" --data_root "$DATA" --output_dir "$RUN/vae" $EXTRA
# 2. Encode the training split once (restartable: rerun the same command after an interruption).
vidtwin-gen encode-dataset --vae "$RUN/vae/vae" --data-root "$DATA" --split 1 --subset train --output-dir "$RUN/latents"
# 3. The class-conditional DiT on the cached latents.
$LAUNCH -m vidtwin_gen.training.train_dit --config "$DIT_CONFIG" --vae "$RUN/vae/vae" --latent_cache "$RUN/latents" \
    --output_dir "$RUN/dit" $EXTRA
# 4. Reconstruction on the test list, FVD of samples against the training clips (StyleGAN-V protocol).
vidtwin-gen eval-recon --vae "$RUN/vae/vae" --data-root "$DATA" --split 1 --subset test --output "$RUN/recon.json"
vidtwin-gen eval-fvd --pipeline "$RUN/dit/pipeline" --data-root "$DATA" --split 1 --subset train $FVD_ARGS \
    --output "$RUN/fvd.json"
