# sandbox-init build, test and benchmark entry points.
#
#   make          the static binary: target/x86_64-unknown-linux-musl/release/sandbox-init
#   make test     the whole suite: format, lints, unit tests, privileged tiers (run as root;
#                 installs what the tiers need and starts a Docker engine when none answers)
#   make test-fresh  the README's commands on a fresh machine, in a container (root, Docker)
#   make bench    setup time and memory beside the tools users run today (run as root)

TARGET   ?= x86_64-unknown-linux-musl
CARGO    ?= cargo
RELEASE  := target/$(TARGET)/release
BIN      := $(RELEASE)/sandbox-init
PROBE    := $(RELEASE)/sandbox-probe

.PHONY: all build deps test-deps test test-unit lint bench clean test-fresh

all: build

build: deps
	$(CARGO) build --release --locked --target $(TARGET) --bin sandbox-init
	@ls -l $(BIN)

# Prerequisites, checked by what each step really uses (scripts/prereqs.sh): installed when
# run as root on Debian/Ubuntu, otherwise the one command that installs them is printed.
deps:
	@scripts/prereqs.sh build

test-deps:
	@scripts/prereqs.sh build test

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --target $(TARGET) --workspace --all-targets -- -D warnings

test-unit: deps
	$(CARGO) test --locked --target $(TARGET) --lib --bins

# As root: installs what the tiers need and starts a Docker engine when none answers. As
# another user it stops at once and prints the command to run (the tiers need root).
# Every tier runs even after one fails, so a run shows all that is wrong at once.
test: test-deps lint
	$(CARGO) build --locked --target $(TARGET) -p sandbox-probe
	$(CARGO) test --locked --no-fail-fast --target $(TARGET)

# The README's two commands on a fresh Debian 12 machine, in a container with nothing
# installed but what such a machine has (scripts/test-fresh-machine.sh; root and Docker).
test-fresh:
	scripts/test-fresh-machine.sh

bench: deps
	@scripts/prereqs.sh bench
	$(CARGO) build --release --locked --target $(TARGET) -p sandbox-init -p sandbox-probe
	scripts/bench.sh $(BIN) $(PROBE)

clean:
	$(CARGO) clean

# ---- Second architecture and Docker images ----------------------------------------------
#   make all-arch      also target/aarch64-unknown-linux-musl/release/sandbox-init
#   make test-arm64    the arm64 binary under qemu-user: --help, check, the unit tests
#   make images        sandbox-init:latest (FROM scratch) and sandbox-init/claude:latest
# Linker and bindgen headers for aarch64 come from .cargo/config.toml.
ARM_TARGET := aarch64-unknown-linux-musl
ARM_BIN    := target/$(ARM_TARGET)/release/sandbox-init

.PHONY: all-arch build-arm64 deps-arm64 test-arm64 images image-scratch image-claude image-devcontainer

all-arch: build build-arm64

build-arm64: deps deps-arm64
	$(CARGO) build --release --locked --target $(ARM_TARGET) --bin sandbox-init
	@ls -l $(ARM_BIN)

deps-arm64:
	@scripts/prereqs.sh arm64

# Unit tests run through qemu-aarch64-static (no binfmt registration needed), one at a
# time: a test that forks while another test's thread runs guest code can leave the child
# waiting forever on a lock of qemu's own (seen once: the child of a fork test asleep in a
# futex). sandbox-init's own children keep to async-signal-safe calls or fork single-threaded.
test-arm64: build-arm64
	scripts/arm64-smoke.sh $(ARM_BIN)
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static \
	  $(CARGO) test --locked --target $(ARM_TARGET) --lib -- --test-threads=1

images: image-scratch image-claude

image-scratch: build
	scripts/build-images.sh --bin $(BIN) scratch

image-claude: build
	scripts/build-images.sh --bin $(BIN) claude

image-devcontainer: image-claude
	scripts/build-images.sh devcontainer
