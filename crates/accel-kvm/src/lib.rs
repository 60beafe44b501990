//! The KVM accelerator: quern's CPU trait on Linux KVM.
