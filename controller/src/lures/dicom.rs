//! A small, valid DICOM Part 10 file (secondary capture, 64×64 8-bit) with
//! fake demographics, written with dicom-object.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::fake::{Patient, Rng};

/// A `2.25.<decimal>` UID (derived from 128 random bits of the seed).
fn uid(rng: &mut Rng) -> String {
    let value = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    format!("2.25.{}", value >> 1)
}

pub fn study(p: &Patient, accession: &str, date: &str, rng: &mut Rng) -> Result<Vec<u8>, String> {
    const SIZE: u16 = 64;
    let study_uid = uid(rng);
    let series_uid = uid(rng);
    let sop_uid = uid(rng);
    let pixels: Vec<u8> = (0..usize::from(SIZE) * usize::from(SIZE))
        .map(|i| {
            let (x, y) = (i % 64, i / 64);
            let body = if (x as i64 - 32).pow(2) + (y as i64 - 34).pow(2) < 26 * 26 {
                90
            } else {
                10
            };
            u8::try_from((body + (rng.below(24) as usize) + y) % 256).unwrap_or(0)
        })
        .collect();
    let time = format!(
        "{:02}{:02}{:02}",
        7 + rng.below(12),
        rng.below(60),
        rng.below(60)
    );
    let text = |tag, vr, value: String| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let us = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let obj = InMemDicomObject::from_element_iter([
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100".into()),
        text(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE.into(),
        ),
        text(tags::SOP_INSTANCE_UID, VR::UI, sop_uid),
        text(tags::STUDY_DATE, VR::DA, date.into()),
        text(tags::STUDY_TIME, VR::TM, time),
        text(tags::ACCESSION_NUMBER, VR::SH, accession.into()),
        text(tags::MODALITY, VR::CS, "CR".into()),
        text(tags::CONVERSION_TYPE, VR::CS, "WSD".into()),
        text(tags::INSTITUTION_NAME, VR::LO, "General Hospital".into()),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, p.physician.into()),
        text(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            "CHEST PA AND LATERAL".into(),
        ),
        text(
            tags::PATIENT_NAME,
            VR::PN,
            format!("{}^{}", p.last.to_uppercase(), p.first.to_uppercase()),
        ),
        text(tags::PATIENT_ID, VR::LO, p.mrn.clone()),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, p.birth_compact()),
        text(tags::PATIENT_SEX, VR::CS, p.sex.into()),
        text(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        text(
            tags::STUDY_ID,
            VR::SH,
            accession
                .trim_start_matches("ACC")
                .chars()
                .take(8)
                .collect(),
        ),
        text(tags::SERIES_NUMBER, VR::IS, "1".into()),
        text(tags::INSTANCE_NUMBER, VR::IS, "1".into()),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        ),
        us(tags::ROWS, SIZE),
        us(tags::COLUMNS, SIZE),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)),
    ]);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    file.write_all(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
