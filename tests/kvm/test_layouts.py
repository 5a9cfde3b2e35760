"""construct's layouts (kvmtest/kvm/layouts.py) agree with <linux/kvm.h>: a C program compiled
against the header prints every size and field offset; cffi's view must agree too."""

import shutil
import subprocess

import pytest
from construct import Renamed, Struct

from kvmtest.kvm import layouts


def fields(struct, prefix=""):
    """(dotted name, offset, size) of every named field, nested structs flattened."""
    offset = 0
    for sub in struct.subcons:
        size = sub.sizeof()
        name = getattr(sub, "name", None)
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        if name:
            yield prefix + name, offset, size
            if isinstance(inner, Struct):
                for n, o, s in fields(inner, f"{prefix}{name}."):
                    yield n, offset + o, s
        offset += size


def c_program() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/kvm.h>",
        "int main(void){",
    ]
    for struct_name, struct in layouts.STRUCTS.items():
        lines.append(f'printf("{struct_name} %zu\\n", sizeof(struct {struct_name}));')
        for name, _, _ in fields(struct):
            lines.append(
                f'printf("{struct_name}.{name} %zu %zu\\n", offsetof(struct {struct_name}, {name}),'
                f" sizeof(((struct {struct_name} *)0)->{name}));"
            )
    lines.append("return 0;}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def header_view(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    tmp = tmp_path_factory.mktemp("layouts")
    (tmp / "layouts.c").write_text(c_program())
    subprocess.run(["gcc", "-o", tmp / "layouts", tmp / "layouts.c"], check=True)
    out = subprocess.run([tmp / "layouts"], check=True, capture_output=True, text=True).stdout
    return {line.split()[0]: tuple(map(int, line.split()[1:])) for line in out.splitlines()}


@pytest.mark.parametrize("struct_name", sorted(layouts.STRUCTS))
def test_sizes_and_offsets_agree_with_the_kernel_header(struct_name, header_view):
    struct = layouts.STRUCTS[struct_name]
    assert header_view[struct_name] == (struct.sizeof(),)
    for name, offset, size in fields(struct):
        assert header_view[f"{struct_name}.{name}"] == (offset, size), name


def test_every_field_is_checked():
    """The walk reaches nested fields, so a wrong inner offset cannot hide."""
    names = [n for n, _, _ in fields(layouts.kvm_vcpu_events)]
    assert "smi.latched_init" in names and "exception_payload" in names
    assert len([n for n, _, _ in fields(layouts.kvm_sregs)]) > 100


def test_cffi_agrees_where_it_declares_the_structure():
    from kvmtest.kvm import ffi, require

    require()
    for struct_name, struct in layouts.STRUCTS.items():
        ctype = f"struct {struct_name}"
        try:
            size = ffi.sizeof(ctype)
        except ffi.error:
            continue  # not declared to cffi (kvm_sregs2: only the recorder decodes it)
        assert size == struct.sizeof(), struct_name
        for name, offset, _ in fields(struct):
            try:
                assert ffi.offsetof(ctype, *name.split(".")) == offset, (struct_name, name)
            except (KeyError, TypeError):
                continue  # a field cffi's partial declaration leaves out (`...;`)


def test_lapic_page_registers_round_trip():
    page = bytes(range(256)) * 4
    regs = layouts.lapic_registers(page)
    assert regs["id"] == int.from_bytes(page[0x20:0x24], "little")
    changed = layouts.with_lapic_registers(page, ldr=0x01000000, spiv=0x1FF)
    assert layouts.lapic_registers(changed)["ldr"] == 0x01000000
    assert changed[0x24:0x30] == page[0x24:0x30]  # padding kept
    assert sum(a != b for a, b in zip(page, changed, strict=True)) <= 8
    assert layouts.kvm_lapic_registers.sizeof() == layouts.KVM_APIC_REG_SIZE
    built = layouts.kvm_lapic_registers.build(layouts.kvm_lapic_registers.parse(page))
    assert layouts.lapic_registers(built) == regs


def test_regs_parse_a_real_vcpu(kvm):
    """Bytes KVM itself wrote (KVM_GET_SREGS on a fresh vCPU) decode to what cffi reads."""
    from kvmtest.kvm import ffi

    vm = kvm.create_vm()
    try:
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        parsed = layouts.kvm_sregs.parse(bytes(ffi.buffer(sregs)))
        assert parsed.cs.selector == sregs.cs.selector and parsed.cs.base == sregs.cs.base
        assert parsed.cr0 == sregs.cr0 and parsed.apic_base == sregs.apic_base
    finally:
        vm.close()
