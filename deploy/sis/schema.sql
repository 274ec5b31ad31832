-- sevisflow reference SIS (PostgreSQL 15), schema public.
--
-- A small but realistic student-information system: the source the connector captures.
-- Ids are explicit bigints chosen by deploy/sis/generator.py (no serials) so that a load with the
-- same seed gives the same rows and therefore the same change events.
-- Country columns hold ISO 3166-1 alpha-2 codes and US states their full names: mapping them to
-- SEVIS's FIPS-style and two-letter codes is the pipeline's job, as with a real SIS.
-- Every table has REPLICA IDENTITY FULL so update and delete events carry the whole old row
-- (the normalize stage diffs before/after), and every table is in publication sevisflow_sis.

CREATE TABLE public.person (
    person_id           bigint PRIMARY KEY,
    school_id           text NOT NULL UNIQUE CHECK (school_id ~ '^S[0-9]{8}$'),
    -- the member school of a multi-school SIS (one vendor, many F/M schools): the value a [[schools]] entry
    -- of the settings names as sis_school; NULL = the deployment's main school ([school])
    school_code         text,
    first_name          text CHECK (first_name <> ''),          -- NULL for mononymous people
    middle_name         text,
    last_name           text NOT NULL CHECK (last_name <> ''),
    preferred_name      text,
    birth_date          date,
    gender              text CHECK (gender IN ('M', 'F', 'X')),
    birth_city          text,
    birth_country       char(2) CHECK (birth_country ~ '^[A-Z]{2}$'),
    citizenship_country char(2) CHECK (citizenship_country ~ '^[A-Z]{2}$'),
    email               text CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$'),
    phone               text,
    phone_country_code  text CHECK (phone_country_code ~ '^[0-9]{1,3}$'),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.immigration (
    person_id      bigint PRIMARY KEY REFERENCES public.person (person_id),
    visa_type      text CHECK (visa_type IN ('F-1', 'M-1', 'J-1', 'H-1B', 'B-2')),
    sevis_id       text UNIQUE CHECK (sevis_id ~ '^N[0-9]{10}$'),
    sevis_status   text CHECK (sevis_status IN ('INITIAL', 'ACTIVE', 'COMPLETED', 'TERMINATED', 'CANCELED')),
    issue_reason   text CHECK (issue_reason IN ('I', 'S')),   -- I initial attendance, S change of status
    i20_issue_date date,
    -- a SEVIS status exists only for a record SEVIS has created
    CONSTRAINT immigration_status_needs_id CHECK (sevis_status IS NULL OR sevis_id IS NOT NULL)
);

CREATE TABLE public.address (
    address_id  bigint PRIMARY KEY,
    person_id   bigint NOT NULL REFERENCES public.person (person_id),
    kind        text NOT NULL CHECK (kind IN ('US_PHYSICAL', 'US_MAILING', 'FOREIGN')),
    line1       text NOT NULL CHECK (line1 <> ''),
    line2       text,
    city        text,
    state       text,            -- US: full state name ('Illinois'); foreign: province or region
    postal_code text,            -- US: 5-digit ZIP; foreign: local format, NULL where none exists
    country     char(2) NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    CONSTRAINT address_one_per_kind UNIQUE (person_id, kind),
    CONSTRAINT address_us_kinds_in_us CHECK ((kind = 'FOREIGN') = (country <> 'US')),
    CONSTRAINT address_us_zip CHECK (kind = 'FOREIGN' OR postal_code ~ '^[0-9]{5}$')
);

CREATE TABLE public.program (
    program_id                  bigint PRIMARY KEY,
    person_id                   bigint NOT NULL REFERENCES public.person (person_id),
    degree_level                text NOT NULL CHECK (degree_level IN
        ('ASSOCIATE', 'BACHELORS', 'MASTERS', 'DOCTORATE', 'LANGUAGE', 'CERTIFICATE', 'NON_DEGREE')),
    major_cip                   text NOT NULL CHECK (major_cip ~ '^[0-9]{2}\.[0-9]{4}$' AND major_cip <> '00.0000'),
    second_major_cip            text CHECK (second_major_cip ~ '^[0-9]{2}\.[0-9]{4}$'),
    minor_cip                   text CHECK (minor_cip ~ '^[0-9]{2}\.[0-9]{4}$'),
    start_date                  date NOT NULL,
    expected_end_date           date NOT NULL,
    status                      text NOT NULL CHECK (status IN
        ('ADMITTED', 'ACTIVE', 'COMPLETED', 'WITHDRAWN', 'DISMISSED', 'DEFERRED', 'DECLINED')),
    english_required            boolean,
    english_met                 boolean,
    english_not_required_reason text,
    is_current                  boolean NOT NULL DEFAULT true,
    CONSTRAINT program_dates CHECK (expected_end_date > start_date),
    -- SEVIS asks for a reason whenever English proficiency is not required
    CONSTRAINT program_english_reason CHECK (english_required IS NOT FALSE OR english_not_required_reason IS NOT NULL)
);
CREATE UNIQUE INDEX program_one_current ON public.program (person_id) WHERE is_current;
CREATE INDEX program_person ON public.program (person_id);

CREATE TABLE public.term (
    term_id         text PRIMARY KEY CHECK (term_id ~ '^[0-9]{4}(SP|SU|FA|WI)$'),
    name            text NOT NULL,
    start_date      date NOT NULL,
    end_date        date NOT NULL,
    next_term_start date,
    CONSTRAINT term_dates CHECK (end_date > start_date),
    CONSTRAINT term_next_after_end CHECK (next_term_start IS NULL OR next_term_start > end_date)
);

CREATE TABLE public.enrollment (
    enrollment_id bigint PRIMARY KEY,
    person_id     bigint NOT NULL REFERENCES public.person (person_id),
    term_id       text NOT NULL REFERENCES public.term (term_id),
    status        text NOT NULL CHECK (status IN ('REGISTERED', 'ENROLLED', 'WITHDRAWN', 'DROPPED')),
    credit_hours  numeric(4,1) NOT NULL DEFAULT 0 CHECK (credit_hours >= 0),
    full_time     boolean NOT NULL DEFAULT false,
    confirmed_at  timestamptz,
    CONSTRAINT enrollment_once_per_term UNIQUE (person_id, term_id),
    -- "enrolled" means the school confirmed attendance, at a known time
    CONSTRAINT enrollment_confirmed CHECK (status <> 'ENROLLED' OR confirmed_at IS NOT NULL)
);
CREATE INDEX enrollment_term ON public.enrollment (term_id);

CREATE TABLE public.finance (
    person_id            bigint PRIMARY KEY REFERENCES public.person (person_id),
    academic_term_months integer NOT NULL CHECK (academic_term_months BETWEEN 1 AND 12),
    tuition              integer NOT NULL DEFAULT 0 CHECK (tuition BETWEEN 0 AND 99999999),
    living_expenses      integer NOT NULL DEFAULT 0 CHECK (living_expenses BETWEEN 0 AND 99999999),
    dependent_expenses   integer NOT NULL DEFAULT 0 CHECK (dependent_expenses BETWEEN 0 AND 99999999),
    other_costs          integer NOT NULL DEFAULT 0 CHECK (other_costs BETWEEN 0 AND 99999999),
    other_costs_remarks  text,
    personal_funds       integer NOT NULL DEFAULT 0 CHECK (personal_funds BETWEEN 0 AND 99999999),
    school_funds         integer NOT NULL DEFAULT 0 CHECK (school_funds BETWEEN 0 AND 99999999),
    school_funds_remarks text,
    other_funds          integer NOT NULL DEFAULT 0 CHECK (other_funds BETWEEN 0 AND 99999999),
    other_funds_source   text,
    CONSTRAINT finance_school_funds_explained CHECK (school_funds = 0 OR school_funds_remarks IS NOT NULL),
    CONSTRAINT finance_other_funds_explained CHECK (other_funds = 0 OR other_funds_source IS NOT NULL),
    -- SEVIS takes "other" costs only with remarks (FinancialInfo/Expense/Other/Remarks)
    CONSTRAINT finance_other_costs_explained CHECK (other_costs = 0 OR other_costs_remarks IS NOT NULL)
);

CREATE TABLE public.dependent (
    dependent_id        bigint PRIMARY KEY,
    person_id           bigint NOT NULL REFERENCES public.person (person_id),
    first_name          text,
    last_name           text NOT NULL CHECK (last_name <> ''),
    birth_date          date NOT NULL,
    gender              text CHECK (gender IN ('M', 'F', 'X')),
    birth_country       char(2) CHECK (birth_country ~ '^[A-Z]{2}$'),
    citizenship_country char(2) CHECK (citizenship_country ~ '^[A-Z]{2}$'),
    relationship        text NOT NULL CHECK (relationship IN ('SPOUSE', 'CHILD')),
    visa_type           text NOT NULL CHECK (visa_type IN ('F-2', 'M-2')),
    status              text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'REMOVED'))
);
CREATE UNIQUE INDEX dependent_one_active_spouse ON public.dependent (person_id)
    WHERE relationship = 'SPOUSE' AND status = 'ACTIVE';
CREATE INDEX dependent_person ON public.dependent (person_id);

-- School-approved authorisations SEVIS must hear about: reduced course load (RCL), curricular
-- practical training (CPT), optional practical training (OPT) and its STEM extension (STEM_OPT).
-- A DSO approves (status APPROVED) or withdraws (WITHDRAWN) one; dates are the authorised period.
-- CPT and STEM_OPT name the employer (US address, state as a full name like address.state);
-- RCL names the school's reason code; OPT says whether the academic-year requirement is met.
CREATE TABLE public.student_authorization (
    authorization_id     bigint PRIMARY KEY,
    person_id            bigint NOT NULL REFERENCES public.person (person_id),
    kind                 text NOT NULL CHECK (kind IN ('RCL', 'CPT', 'OPT', 'STEM_OPT')),
    status               text NOT NULL DEFAULT 'APPROVED' CHECK (status IN ('APPROVED', 'WITHDRAWN')),
    start_date           date NOT NULL,
    end_date             date NOT NULL,
    time_basis           text CHECK (time_basis IN ('FULL_TIME', 'PART_TIME')),
    employer_name        text,
    employer_line1       text,
    employer_line2       text,
    employer_city        text,
    employer_state       text,
    employer_postal_code text CHECK (employer_postal_code ~ '^[0-9]{5}$'),
    course_relevance     text,
    rcl_reason           text CHECK (rcl_reason IN
        ('ENGLISH_LANGUAGE', 'READING', 'TEACHING_METHODS', 'COURSE_LEVEL', 'MEDICAL', 'FINAL_TERM')),
    academic_year_met    boolean,
    remarks              text,
    CONSTRAINT authorization_dates CHECK (end_date >= start_date)
);
CREATE INDEX student_authorization_person ON public.student_authorization (person_id);

-- J-1 exchange visitors: what the university, as the J-1 sponsor, keeps about each exchange visitor — an
-- HR-style "J-1 appointment" record next to the registrar's tables (research scholars, professors and
-- short-term scholars are in person like everyone with a university id; J-1 students have their
-- registrar rows too). Codes are the sponsor's own words; the mapping translates them to SEVIS codes.
-- sponsor_program is the sponsor's code for a DOS-designated program (the settings map it to the
-- program number P-x-xxxxx / G-x-xxxxx); home_country is the permanent residence country.
CREATE TABLE public.exchange_visitor (
    person_id          bigint PRIMARY KEY REFERENCES public.person (person_id),
    sponsor_program    text NOT NULL CHECK (sponsor_program ~ '^[A-Z0-9_]{2,10}$'),
    category           text NOT NULL CHECK (category IN ('PROFESSOR', 'RESEARCH_SCHOLAR', 'SHORT_TERM_SCHOLAR',
                           'SPECIALIST', 'STUDENT_BACHELORS', 'STUDENT_MASTERS', 'STUDENT_DOCTORATE', 'STUDENT_NON_DEGREE')),
    position_title     text NOT NULL CHECK (position_title IN ('PROFESSOR', 'ASSOCIATE_PROFESSOR', 'POSTDOC',
                           'RESEARCHER', 'VISITING_SCHOLAR', 'GRADUATE_STUDENT', 'VISITING_STUDENT')),
    department         text,
    subject_cip        text NOT NULL CHECK (subject_cip ~ '^[0-9]{2}\.[0-9]{4}$' AND subject_cip <> '00.0000'),
    subject_remarks    text NOT NULL CHECK (subject_remarks <> ''),
    home_country       char(2) NOT NULL CHECK (home_country ~ '^[A-Z]{2}$'),
    begin_date         date NOT NULL,
    end_date           date NOT NULL,
    status             text NOT NULL CHECK (status IN ('PENDING', 'CHECKED_IN', 'COMPLETED', 'NO_SHOW', 'CANCELLED',
                           'TERMINATED')),
    checked_in_on      date,
    end_reason         text CHECK (end_reason IN ('WITHDREW', 'DEATH', 'OTHER')),    -- an early end (no misconduct)
    end_remarks        text,
    termination_reason text CHECK (termination_reason IN ('DISCIPLINARY', 'CONVICTION', 'UNAUTHORIZED_EMPLOYMENT',
                           'NOT_PURSUING', 'NO_INSURANCE', 'OTHER')),
    termination_date   date,
    change_remarks     text,      -- why the last amendment (dates, subject) was made; printed on the DS-2019
    CONSTRAINT exchange_dates CHECK (end_date > begin_date),
    CONSTRAINT exchange_checked_in CHECK (status <> 'CHECKED_IN' OR checked_in_on IS NOT NULL),
    CONSTRAINT exchange_terminated CHECK (status <> 'TERMINATED'
                                          OR (termination_reason IS NOT NULL AND termination_date IS NOT NULL))
);

-- Who pays: whole dollars for the whole program (SEVIS FinancialInfo). Agencies and organisations are the
-- SEVIS code lists' codes (NSF, NIH, UN, WB ...); other_org is a name.
CREATE TABLE public.exchange_funding (
    person_id        bigint PRIMARY KEY REFERENCES public.person (person_id),
    us_govt_funds    boolean NOT NULL DEFAULT false,
    sponsor_funds    integer NOT NULL DEFAULT 0 CHECK (sponsor_funds BETWEEN 0 AND 99999999),
    us_agency        text CHECK (us_agency ~ '^[A-Z]{2,8}$'),
    us_agency_funds  integer NOT NULL DEFAULT 0 CHECK (us_agency_funds BETWEEN 0 AND 99999999),
    intl_org         text CHECK (intl_org ~ '^[A-Z]{2,8}$'),
    intl_org_funds   integer NOT NULL DEFAULT 0 CHECK (intl_org_funds BETWEEN 0 AND 99999999),
    home_govt_funds  integer NOT NULL DEFAULT 0 CHECK (home_govt_funds BETWEEN 0 AND 99999999),
    binational_funds integer NOT NULL DEFAULT 0 CHECK (binational_funds BETWEEN 0 AND 99999999),
    other_org        text,
    other_org_funds  integer NOT NULL DEFAULT 0 CHECK (other_org_funds BETWEEN 0 AND 99999999),
    personal_funds   integer NOT NULL DEFAULT 0 CHECK (personal_funds BETWEEN 0 AND 99999999),
    CONSTRAINT exchange_funding_agency CHECK (us_agency_funds = 0 OR us_agency IS NOT NULL),
    CONSTRAINT exchange_funding_intl CHECK (intl_org_funds = 0 OR intl_org IS NOT NULL),
    CONSTRAINT exchange_funding_other CHECK (other_org_funds = 0 OR other_org IS NOT NULL)
);

-- Sites of activity (where the exchange visitor works), one primary; a closed site stays with is_active false.
-- sevis_site_id is the SiteId SEVIS returned, when the office records it.
CREATE TABLE public.exchange_site (
    site_id       bigint PRIMARY KEY,
    person_id     bigint NOT NULL REFERENCES public.person (person_id),
    site_name     text NOT NULL CHECK (site_name <> ''),
    line1         text NOT NULL CHECK (line1 <> ''),
    line2         text,
    city          text,
    state         text,                                   -- full US state name, like address.state
    postal_code   text NOT NULL CHECK (postal_code ~ '^[0-9]{5}$'),
    is_primary    boolean NOT NULL DEFAULT false,
    is_active     boolean NOT NULL DEFAULT true,
    sevis_site_id text
);
CREATE UNIQUE INDEX exchange_site_one_primary ON public.exchange_site (person_id) WHERE is_primary AND is_active;
CREATE INDEX exchange_site_person ON public.exchange_site (person_id);

-- J-2 spouse and children. status DEPARTED / TERMINATED need end_reason; ENTERED_IN_ERROR: the row was a mistake.
CREATE TABLE public.exchange_dependent (
    dependent_id        bigint PRIMARY KEY,
    person_id           bigint NOT NULL REFERENCES public.person (person_id),
    first_name          text,
    last_name           text NOT NULL CHECK (last_name <> ''),
    birth_date          date NOT NULL,
    gender              text CHECK (gender IN ('M', 'F', 'X')),
    birth_city          text,
    birth_country       char(2) CHECK (birth_country ~ '^[A-Z]{2}$'),
    citizenship_country char(2) CHECK (citizenship_country ~ '^[A-Z]{2}$'),
    residence_country   char(2) CHECK (residence_country ~ '^[A-Z]{2}$'),
    relationship        text NOT NULL CHECK (relationship IN ('SPOUSE', 'CHILD')),
    status              text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'DEPARTED', 'TERMINATED',
                            'ENTERED_IN_ERROR')),
    end_reason          text CHECK (end_reason IN ('DEATH', 'DIVORCE', 'CONVICTION', 'UNAUTHORIZED_EMPLOYMENT', 'OTHER')),
    end_date            date,
    accompanying        boolean NOT NULL DEFAULT true,      -- travels with the exchange visitor (DS-2019 purpose)
    sevis_id            text UNIQUE CHECK (sevis_id ~ '^N[0-9]{10}$'),
    CONSTRAINT exchange_dependent_ended CHECK (status IN ('ACTIVE', 'ENTERED_IN_ERROR') OR end_reason IS NOT NULL)
);
CREATE UNIQUE INDEX exchange_dependent_one_spouse ON public.exchange_dependent (person_id)
    WHERE relationship = 'SPOUSE' AND status = 'ACTIVE';
CREATE INDEX exchange_dependent_person ON public.exchange_dependent (person_id);

ALTER TABLE public.person      REPLICA IDENTITY FULL;
ALTER TABLE public.immigration REPLICA IDENTITY FULL;
ALTER TABLE public.address     REPLICA IDENTITY FULL;
ALTER TABLE public.program     REPLICA IDENTITY FULL;
ALTER TABLE public.term        REPLICA IDENTITY FULL;
ALTER TABLE public.enrollment  REPLICA IDENTITY FULL;
ALTER TABLE public.finance     REPLICA IDENTITY FULL;
ALTER TABLE public.dependent   REPLICA IDENTITY FULL;
ALTER TABLE public.student_authorization REPLICA IDENTITY FULL;
ALTER TABLE public.exchange_visitor REPLICA IDENTITY FULL;
ALTER TABLE public.exchange_funding REPLICA IDENTITY FULL;
ALTER TABLE public.exchange_site REPLICA IDENTITY FULL;
ALTER TABLE public.exchange_dependent REPLICA IDENTITY FULL;

CREATE PUBLICATION sevisflow_sis FOR TABLE
    public.person, public.immigration, public.address, public.program,
    public.term, public.enrollment, public.finance, public.dependent, public.student_authorization,
    public.exchange_visitor, public.exchange_funding, public.exchange_site, public.exchange_dependent;
