# sandbox-init build, test and benchmark entry points.
#
#   make          the static binary: target/x86_64-unknown-linux-musl/release/sandbox-init
#   make test     the whole suite: format, lints, unit tests, privileged tiers (run as root)
#   make bench    setup time and memory beside the tools users run today (run as root)

TARGET   ?= x86_64-unknown-linux-musl
CARGO    ?= cargo
RELEASE  := target/$(TARGET)/release
BIN      := $(RELEASE)/sandbox-init
PROBE    := $(RELEASE)/sandbox-probe

.PHONY: all build deps test test-unit lint bench clean

all: build

build: deps
	$(CARGO) build --release --locked --target $(TARGET) --bin sandbox-init
	@ls -l $(BIN)

# Build prerequisites: rustables runs bindgen (needs libclang), and the binary is static
# (needs the musl target). Installed when we can, otherwise the fixing command is printed.
deps:
	@if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libclang (rustables' bindgen needs it)"; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends libclang-dev >/dev/null; \
	  else \
	    echo "missing libclang: run  sudo apt-get install -y libclang-dev"; exit 1; \
	  fi; \
	fi
	@if ! rustup target list --installed 2>/dev/null | grep -qx $(TARGET); then \
	  echo "adding the Rust target $(TARGET)"; \
	  rustup target add $(TARGET) || { echo "run: rustup target add $(TARGET)"; exit 1; }; \
	fi

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --target $(TARGET) --all-targets -- -D warnings

test-unit: deps
	$(CARGO) test --locked --target $(TARGET) --lib --bins

# The privileged tiers need root; as another user they fail with a message saying so.
test: lint
	$(CARGO) test --locked --target $(TARGET)

bench: deps
	$(CARGO) build --release --locked --target $(TARGET) --bin sandbox-init --bin sandbox-probe
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

.PHONY: all-arch deps-arm64 test-arm64 images image-scratch image-claude image-devcontainer

all-arch: build deps-arm64
	$(CARGO) build --release --locked --target $(ARM_TARGET) --bin sandbox-init
	@ls -l $(ARM_BIN)

deps-arm64:
	@if ! rustup target list --installed 2>/dev/null | grep -qx $(ARM_TARGET); then \
	  rustup target add $(ARM_TARGET) || { echo "run: rustup target add $(ARM_TARGET)"; exit 1; }; \
	fi
	@for p in linux-libc-dev-arm64-cross qemu-user-static; do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$p"; apt-get install -y -qq --no-install-recommends $$p >/dev/null || \
	      { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$p >/dev/null; }; \
	  else echo "missing $$p: run  sudo apt-get install -y $$p"; exit 1; fi; \
	done

# Unit tests run through qemu-aarch64-static (no binfmt registration needed).
test-arm64: all-arch
	scripts/arm64-smoke.sh $(ARM_BIN)
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static \
	  $(CARGO) test --locked --target $(ARM_TARGET) --lib

images: image-scratch image-claude

image-scratch: build
	scripts/build-images.sh --bin $(BIN) scratch

image-claude: build
	scripts/build-images.sh --bin $(BIN) claude

image-devcontainer: image-claude
	scripts/build-images.sh devcontainer
