#!/usr/bin/env bats
# Checkpoints we write must be readable by the reference tools.

setup() {
    cd "$BATS_TEST_DIRNAME/../.."
}

@test "torch.load reads a .pth written by ckpt_save_pth, bit for bit" {
    /usr/bin/python3 -c 'import torch' 2>/dev/null || skip "PyTorch not installed (make deps-reference)"
    build/tests/test_checkpoint --write "$BATS_TEST_TMPDIR/ours.pth"
    run /usr/bin/python3 tests/ref/check_saved.py "$BATS_TEST_TMPDIR/ours.pth"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "a .safetensors written by ckpt_save_safetensors matches the format, bit for bit" {
    [ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"
    build/tests/test_checkpoint --write "$BATS_TEST_TMPDIR/ours.safetensors"
    run /usr/bin/python3 tests/ref/check_saved.py "$BATS_TEST_TMPDIR/ours.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
}
